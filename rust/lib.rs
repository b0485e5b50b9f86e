//! `sessionstore._native`: the Python face of the native writer.
//!
//! Thin wrappers only: each converts its arguments, runs the plain-Rust work of
//! `save`, `load` or `lock` with the GIL released, and turns failures into the
//! exceptions `sessionstore._python_writer` raises for the same failure.

// Sizes, offsets and inode numbers are 64-bit in every file format and syscall
// here; a 32-bit C library's `stat`, `off_t` and `readdir` are not, and would
// fail on large files or inodes. Said plainly rather than by type errors.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("sessionstore's native core supports 64-bit platforms only");

pub mod checkpoint_worker;
pub mod held;
pub mod listing;
pub mod load;
pub mod lock;
pub mod save;
pub mod slots_format;
pub mod slotted;
pub mod sys;
#[cfg(test)]
mod test_dir;

use std::cell::Cell;
use std::ffi::{CStr, CString};

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Mutex, PoisonError, TryLockError};

use pyo3::exceptions::{PyBufferError, PyMemoryError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};

use crate::save::{At, Checkpoint, Cleanup, Failure, Save, SaveError};
use crate::slotted::SlottedSave;

/// What the interpreter's `os` functions say of a path with a NUL inside (the
/// wording changed in Python 3.13), asked once when the module is loaded.
static NUL_IN_PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The error for a path with a NUL inside: no syscall can name it, and it is
/// refused as Python's `os` functions refuse it, in their words.
fn nul_in_path() -> PyErr {
    let message = NUL_IN_PATH
        .get()
        .map_or("embedded null byte", String::as_str);
    PyValueError::new_err(message.to_owned())
}

/// Asks `os.open`, the first call of every fallback step on a location, what
/// it says of a path with a NUL inside.
fn os_nul_in_path_message(py: Python<'_>) -> PyResult<String> {
    match py.import("os")?.call_method1("open", ("\0", 0)) {
        Err(err) if err.is_instance_of::<PyValueError>(py) => Ok(err.value(py).str()?.to_string()),
        Err(err) => Err(err),
        Ok(_) => Ok("embedded null byte".to_owned()),
    }
}

/// A path as an owned C string; a NUL inside is refused as Python's `os`
/// functions refuse it.
fn c_path(path: &[u8]) -> PyResult<CString> {
    sys::c_path(path).ok_or_else(nul_in_path)
}

/// Whether the interpreter's file system encoding is UTF-8 with surrogateescape
/// (asked once): then a name's UTF-8 form is its file system form, and a valid
/// UTF-8 name decodes to the `str` `os.fsdecode` gives. Under another locale
/// every name goes through the interpreter's own codec, as `os` does.
fn fs_is_utf8(py: Python<'_>) -> bool {
    static UTF8: PyOnceLock<bool> = PyOnceLock::new();
    *UTF8.get_or_init(py, || {
        let asked = || -> PyResult<bool> {
            let sys = py.import("sys")?;
            let encoding: String = sys.call_method0("getfilesystemencoding")?.extract()?;
            let errors: String = sys.call_method0("getfilesystemencodeerrors")?.extract()?;
            let encoding = encoding.to_ascii_lowercase().replace('_', "-");
            Ok(matches!(encoding.as_str(), "utf-8" | "utf8") && errors == "surrogateescape")
        };
        asked().unwrap_or(false)
    })
}

/// A file name as `os.fsdecode` gives it, for listings and error messages.
fn fs_name<'py>(py: Python<'py>, name: &[u8]) -> PyResult<Bound<'py, PyString>> {
    if fs_is_utf8(py) {
        if let Ok(text) = std::str::from_utf8(name) {
            return Ok(PyString::new(py, text));
        }
    }
    let len = pyo3::ffi::Py_ssize_t::try_from(name.len())
        .map_err(|_| PyValueError::new_err("file name too long"))?;
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyUnicode_DecodeFSDefaultAndSize(name.as_ptr().cast(), len),
        )?
        .cast_into::<PyString>()
        .map_err(Into::into)
    }
}

/// A path argument as the C string the syscalls take, borrowed from the Python
/// object that holds it: no copy on the way to the kernel.
///
/// A `str` is encoded as `os.fsencode` does; under a UTF-8 file system encoding
/// that is the string's cached UTF-8 form, unless it holds lone surrogates
/// (from undecodable names). A `bytes` path, or a `PathLike` of either, works too.
struct FsPath<'py> {
    // Keeps the memory behind `ptr` alive.
    _holder: Bound<'py, PyAny>,
    ptr: *const u8,
    len: usize,
}

impl<'py> FsPath<'py> {
    fn new(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = obj.py();
        let mut path = if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
            obj.clone()
        } else {
            unsafe { Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyOS_FSPath(obj.as_ptr()))? }
        };
        if let Ok(text) = path.cast::<PyString>() {
            // CPython keeps the UTF-8 form with a NUL after it, for the string's life.
            if fs_is_utf8(py) {
                if let Ok(utf8) = text.to_str() {
                    let (ptr, len) = (utf8.as_ptr(), utf8.len());
                    return Self::checked(path, ptr, len);
                }
            }
            path = unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    pyo3::ffi::PyUnicode_EncodeFSDefault(text.as_ptr()),
                )?
            };
        }
        let bytes = path.cast::<PyBytes>()?.as_bytes();
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        Self::checked(path, ptr, len)
    }

    fn checked(holder: Bound<'py, PyAny>, ptr: *const u8, len: usize) -> PyResult<Self> {
        let path = Self {
            _holder: holder,
            ptr,
            len,
        };
        // Refused as Python's `os` functions refuse it: no syscall can name it.
        if path.as_bytes().contains(&0) {
            return Err(nul_in_path());
        }
        Ok(path)
    }

    fn as_bytes(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn as_c_str(&self) -> &CStr {
        // Both sources end their bytes with a NUL, and none is inside (checked).
        unsafe {
            CStr::from_bytes_with_nul_unchecked(std::slice::from_raw_parts(self.ptr, self.len + 1))
        }
    }
}

/// `os.path.join(dir, name)` on bytes, so error paths read as the fallback's do.
fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if name.starts_with(b"/") {
        return name.to_vec();
    }
    let mut joined = dir.to_vec();
    if !joined.is_empty() && !joined.ends_with(b"/") {
        joined.push(b'/');
    }
    joined.extend_from_slice(name);
    joined
}

/// `OSError(errno, strerror, filename[, None, filename2])`: Python picks the
/// subclass from `errno`, exactly as for an error raised by the `os` module.
fn os_error(
    py: Python<'_>,
    errno: sys::Errno,
    strerror: &str,
    filename: Option<&[u8]>,
    filename2: Option<&[u8]>,
) -> PyErr {
    let os_error = py.get_type::<PyOSError>();
    let made = match (filename, filename2) {
        (None, _) => os_error.call1((errno, strerror)),
        (Some(path), None) => {
            fs_name(py, path).and_then(|name| os_error.call1((errno, strerror, name)))
        }
        (Some(path), Some(path2)) => fs_name(py, path).and_then(|name| {
            let name2 = fs_name(py, path2)?;
            os_error.call1((errno, strerror, name, py.None(), name2))
        }),
    };
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(err) => err,
    }
}

fn errno_error(py: Python<'_>, errno: sys::Errno, filename: &[u8]) -> PyErr {
    os_error(py, errno, &sys::describe(errno), Some(filename), None)
}

/// The error of a load's open or read of `filename`: "not a regular file" for
/// a FIFO, a device or a socket, MemoryError when the memory cannot be had,
/// as the fallback says them.
fn read_error(py: Python<'_>, errno: sys::Errno, filename: &[u8]) -> PyErr {
    match errno {
        sys::NOT_REGULAR => os_error(py, errno, "not a regular file", Some(filename), None),
        libc::ENOMEM => PyMemoryError::new_err(()),
        _ => errno_error(py, errno, filename),
    }
}

/// `sessionstore._errors.<factory>(next_path)`, the library's LockedStorageError.
fn locked_error(py: Python<'_>, factory: &str, next_path: &[u8]) -> PyErr {
    let made = py
        .import("sessionstore._errors")
        .and_then(|errors| errors.getattr(factory))
        .and_then(|factory| factory.call1((fs_name(py, next_path)?,)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(err) => err,
    }
}

struct SavePaths {
    location: Vec<u8>,
    next_name: Vec<u8>,
    target: Vec<u8>,
}

fn save_error(
    py: Python<'_>,
    error: SaveError,
    paths: &SavePaths,
    codes: &Bound<'_, PyBytes>,
) -> PyErr {
    let next_path = || join(&paths.location, &paths.next_name);
    let err = match error.failure {
        Failure::Os { errno, at } => match at {
            At::Location => errno_error(py, errno, &paths.location),
            At::Next => errno_error(py, errno, &next_path()),
            At::Rename => os_error(
                py,
                errno,
                &sys::describe(errno),
                Some(&next_path()),
                Some(&join(&paths.location, &paths.target)),
            ),
        },
        Failure::NoProgress => os_error(
            py,
            libc::EIO,
            "write made no progress",
            Some(&next_path()),
            None,
        ),
        Failure::Held => locked_error(py, "held", &next_path()),
        Failure::Leftover => locked_error(py, "leftover", &next_path()),
        Failure::UnknownStep(code) => {
            let plan = codes
                .repr()
                .map(|r| r.to_string())
                .unwrap_or_else(|_| format!("{:?}", codes.as_bytes()));
            PyValueError::new_err(format!("unknown save step {code} in plan {plan}"))
        }
    };
    // What failed while undoing the save is kept as the context of the error, never
    // raised in its place.
    let secondary = match error.cleanup {
        None => None,
        Some(Cleanup::Close(errno)) => Some(os_error(py, errno, &sys::describe(errno), None, None)),
        Some(Cleanup::Unlink(errno)) => Some(errno_error(py, errno, &paths.next_name)),
    };
    if secondary.is_some() {
        err.set_context(py, secondary);
    }
    err
}

/// The bytes of `data`, borrowed: `bytes` lend their memory directly; a
/// `bytearray` through a memoryview of it, whose export pins the memory (the
/// bytearray cannot resize) until the returned keeper is dropped. Any other
/// buffer is copied into `bytes`: the stable ABI of Python 3.10, which the
/// extension is built against, offers no way to borrow its memory.
fn borrow_checkpoint<'py>(
    data: &Bound<'py, PyAny>,
) -> PyResult<(Checkpoint, Option<Bound<'py, PyAny>>)> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok((Checkpoint::of(bytes.as_bytes()), None));
    }
    let py = data.py();
    let view = PyMemoryView::from(data)?;
    if !view
        .getattr(pyo3::intern!(py, "c_contiguous"))?
        .is_truthy()?
    {
        return Err(PyBufferError::new_err(
            "checkpoint buffer is not C-contiguous",
        ));
    }
    if let Ok(array) = data.cast::<PyByteArray>() {
        let checkpoint = unsafe { Checkpoint::from_raw(array.data(), array.len()) };
        return Ok((checkpoint, Some(view.into_any())));
    }
    let copy = view
        .call_method0(pyo3::intern!(py, "tobytes"))?
        .cast_into::<PyBytes>()?;
    Ok((Checkpoint::of(copy.as_bytes()), Some(copy.into_any())))
}

/// Run `work` on the bytes of `data` with the GIL released; the borrow of
/// `borrow_checkpoint` ends as soon as it returns.
fn detached_with<T, F>(py: Python<'_>, data: &Bound<'_, PyAny>, work: F) -> PyResult<T>
where
    T: Send,
    F: Send + FnOnce(Checkpoint) -> T,
{
    let (checkpoint, keeper) = borrow_checkpoint(data)?;
    let outcome = py.detach(move || work(checkpoint));
    drop(keeper);
    Ok(outcome)
}

/// Execute a save plan (`codes`) in `location`, with the GIL released throughout.
#[pyfunction]
#[pyo3(name = "save")]
fn save_checkpoint<'py>(
    py: Python<'py>,
    location: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    codes: &Bound<'py, PyBytes>,
    next_name: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let (location, next_name, target) = (
        FsPath::new(location)?,
        FsPath::new(next_name)?,
        FsPath::new(target)?,
    );
    let plan = Save {
        location: location.as_c_str(),
        next_name: next_name.as_c_str(),
        target: target.as_c_str(),
        codes: codes.as_bytes(),
    };
    detached_with(py, data, move |checkpoint| plan.run(checkpoint))?.map_err(|error| {
        let paths = SavePaths {
            location: location.as_bytes().to_vec(),
            next_name: next_name.as_bytes().to_vec(),
            target: target.as_bytes().to_vec(),
        };
        save_error(py, error, &paths, codes)
    })
}

/// Every byte of the file at `path`, read straight into the returned bytes.
#[pyfunction]
#[pyo3(name = "load")]
fn load_checkpoint<'py>(
    py: Python<'py>,
    path: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let path = FsPath::new(path)?;
    let c = path.as_c_str();
    let opened = py
        .detach(|| load::open(c))
        .map_err(|errno| read_error(py, errno, path.as_bytes()))?;
    let size = opened.size;
    // An uninitialised bytes object of the file's size: the reads fill it in place.
    let bytes = match pyo3::ffi::Py_ssize_t::try_from(size) {
        Ok(length) => unsafe {
            let ptr = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), length);
            Bound::from_owned_ptr_or_err(py, ptr)
        },
        Err(_) => Err(PyMemoryError::new_err(())),
    };
    let bytes = match bytes {
        Ok(bytes) => bytes.cast_into::<PyBytes>()?,
        Err(err) => {
            let _ = sys::close(opened.fd);
            return Err(err);
        }
    };
    let dest = unsafe {
        load::Destination::from_raw(pyo3::ffi::PyBytes_AsString(bytes.as_ptr()).cast(), size)
    };
    let fd = opened.fd;
    let (filled, closed) = py.detach(move || {
        let filled = load::fill(fd, dest);
        (filled, sys::close(fd))
    });
    let filled = filled.map_err(|errno| read_error(py, errno, path.as_bytes()))?;
    closed.map_err(|errno| errno_error(py, errno, path.as_bytes()))?;
    if filled.read == size && filled.beyond.is_empty() {
        return Ok(bytes);
    }
    // The file changed size since fstat: rare, so a copy is fine here.
    let mut whole = Vec::new();
    whole
        .try_reserve_exact(filled.read + filled.beyond.len())
        .map_err(|_| PyMemoryError::new_err(()))?;
    whole.extend_from_slice(&bytes.as_bytes()[..filled.read]);
    whole.extend_from_slice(&filled.beyond);
    Ok(PyBytes::new(py, &whole))
}

/// `<module>.<class>(*args)`: an exception class of the library's own.
fn library_error<'py>(
    py: Python<'py>,
    module: &str,
    class: &str,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyErr {
    let made = py
        .import(module)
        .and_then(|module| module.getattr(class))
        .and_then(|class| class.call1(args));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(err) => err,
    }
}

/// ValueError with `template` (one `{}`) filled with `location`, formatted by
/// Python: a name that is not UTF-8 keeps its surrogate escapes, as in the
/// fallback's messages.
fn closed_error(py: Python<'_>, template: &str, location: &[u8]) -> PyErr {
    let message = fs_name(py, location)
        .and_then(|location| PyString::new(py, template).call_method1("format", (location,)));
    match message {
        Ok(message) => PyValueError::new_err(message.unbind()),
        Err(err) => err,
    }
}

/// The library's CorruptCheckpointError for the slots file at `path`.
fn corrupt_error(py: Python<'_>, path: &[u8], reason: &str) -> PyErr {
    match fs_name(py, path) {
        Ok(name) => library_error(
            py,
            "sessionstore._errors",
            "CorruptCheckpointError",
            (name, reason),
        ),
        Err(err) => err,
    }
}

fn slotted_error(
    py: Python<'_>,
    failure: slotted::Failure,
    location: &[u8],
    in_place: &Bound<'_, PyBytes>,
    rebuild: &Bound<'_, PyBytes>,
) -> PyErr {
    let path = |name: &CStr| join(location, name.to_bytes());
    let plan = || {
        in_place
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| format!("{:?}", in_place.as_bytes()))
    };
    match failure {
        slotted::Failure::Os { errno, at } => {
            let path = match at {
                slotted::At::Location => location.to_vec(),
                slotted::At::Next => path(slotted::NEXT_NAME),
                slotted::At::Checkpoint => path(slotted::CHECKPOINT_NAME),
                slotted::At::Slots => path(slotted::SLOTS_NAME),
            };
            errno_error(py, errno, &path)
        }
        slotted::Failure::NoProgress => os_error(
            py,
            libc::EIO,
            "write made no progress",
            Some(&path(slotted::SLOTS_NAME)),
            None,
        ),
        slotted::Failure::Held => locked_error(py, "held", &path(slotted::NEXT_NAME)),
        slotted::Failure::Leftover => locked_error(py, "leftover", &path(slotted::NEXT_NAME)),
        slotted::Failure::ReplaceLayout => os_error(
            py,
            libc::EEXIST,
            "the session is in the replace layout; convert it first",
            Some(&path(slotted::CHECKPOINT_NAME)),
            None,
        ),
        slotted::Failure::Corrupt(reason) => {
            corrupt_error(py, &path(slotted::SLOTS_NAME), &reason.to_string())
        }
        slotted::Failure::Unsynced { errno, hide } => {
            let slots = path(slotted::SLOTS_NAME);
            let err = errno_error(py, errno, &slots);
            // Hiding the unsynced record failed too: kept as the context of the
            // flush's error, which is still the one raised.
            if let Some(hide) = hide {
                err.set_context(py, Some(errno_error(py, hide, &slots)));
            }
            err
        }
        slotted::Failure::Format(reason) => {
            corrupt_error(py, &path(slotted::SLOTS_NAME), &reason.to_string())
        }
        slotted::Failure::UnknownStep(code) => {
            PyValueError::new_err(format!("unknown slotted save step {code} in {}", plan()))
        }
        slotted::Failure::NotChosen => {
            PyValueError::new_err(format!("slot written before it was chosen in {}", plan()))
        }
        slotted::Failure::NoMemory => PyMemoryError::new_err(()),
        slotted::Failure::Rebuild(error) => {
            let paths = SavePaths {
                location: location.to_vec(),
                next_name: slotted::NEXT_NAME.to_bytes().to_vec(),
                target: slotted::SLOTS_NAME.to_bytes().to_vec(),
            };
            save_error(py, error, &paths, rebuild)
        }
    }
}

/// Execute a slotted save plan in `location`: `in_place`, or `rebuild` when
/// there is no slots file or the record does not fit; the GIL released throughout.
#[pyfunction]
fn save_slotted<'py>(
    py: Python<'py>,
    location: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    in_place: &Bound<'py, PyBytes>,
    rebuild: &Bound<'py, PyBytes>,
) -> PyResult<()> {
    let location = FsPath::new(location)?;
    let plan = SlottedSave {
        location: location.as_c_str(),
        in_place: in_place.as_bytes(),
        rebuild: rebuild.as_bytes(),
    };
    detached_with(py, data, move |checkpoint| plan.run(checkpoint))?
        .map_err(|failure| slotted_error(py, failure, location.as_bytes(), in_place, rebuild))
}

/// The newest valid record of the slots file at `path` (with `previous`, the
/// one before it, or None), read straight into the returned bytes.
/// How often a slotted load reads again while concurrent saves change the slots
/// (the fallback's `_READS`).
const SLOT_READS: usize = 100;

#[pyfunction]
#[pyo3(signature = (path, previous = false))]
fn load_slots<'py>(
    py: Python<'py>,
    path: &Bound<'py, PyAny>,
    previous: bool,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let path = FsPath::new(path)?;
    let name = path.as_bytes();
    let c = path.as_c_str();
    let fd = py
        .detach(|| sys::open_regular(c))
        .map_err(|errno| read_error(py, errno, name))?
        .0;
    let wanted = if previous { 2 } else { 1 };
    let read_view = || {
        py.detach(|| slotted::read_view(fd))
            .map_err(|error| match error {
                slotted::ReadError::Os(errno) => errno_error(py, errno, name),
                slotted::ReadError::Corrupt(reason) => corrupt_error(py, name, &reason.to_string()),
            })
    };
    // Up to `wanted` whole records of `view`, newest first, each read straight into
    // an uninitialised bytes object of the record's size.
    let whole_records = |view: &slotted::View| -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let mut found = Vec::new();
        for slot in slots_format::newest_first(&view.headers) {
            // A record the file is too short for is damaged: nothing is allocated for it.
            let Some(record) = view.record(slot) else {
                continue;
            };
            let length = record.length;
            let length = pyo3::ffi::Py_ssize_t::try_from(length)
                .map_err(|_| errno_error(py, libc::EOVERFLOW, name))?;
            let bytes = unsafe {
                let ptr = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), length);
                Bound::from_owned_ptr_or_err(py, ptr)?.cast_into::<PyBytes>()?
            };
            let dest = unsafe {
                let ptr = pyo3::ffi::PyBytes_AsString(bytes.as_ptr()).cast::<u8>();
                load::Destination::from_raw(ptr, length.unsigned_abs())
            };
            let whole = py
                .detach(move || unsafe { slotted::read_record(fd, view, slot, dest.as_mut_ptr()) })
                .map_err(|errno| errno_error(py, errno, name))?;
            if whole {
                found.push(bytes);
                if found.len() == wanted {
                    break;
                }
            }
        }
        Ok(found)
    };
    // A load takes no lock: two saves during one load may overwrite both slots
    // after their headers were read, so no record read is whole. Headers that
    // changed since mean exactly that, and the load reads again; unchanged
    // headers with no whole record mean a damaged file.
    let found = (|| -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let mut view = read_view()?;
        for _ in 0..SLOT_READS {
            let found = whole_records(&view)?;
            if !found.is_empty() {
                return Ok(found);
            }
            let again = read_view()?;
            if again == view {
                break;
            }
            view = again;
        }
        Ok(Vec::new())
    })();
    let closed = sys::close(fd);
    let mut found = found?;
    closed.map_err(|errno| os_error(py, errno, &sys::describe(errno), None, None))?;
    if found.is_empty() {
        return Err(corrupt_error(py, name, "no record passes its checksum"));
    }
    Ok(if previous {
        (found.len() > 1).then(|| found.swap_remove(1))
    } else {
        Some(found.swap_remove(0))
    })
}

/// The lock of the session at `location`: 0 unlocked, 1 held, 2 stale.
#[pyfunction]
fn lock_state(py: Python<'_>, location: &Bound<'_, PyAny>) -> PyResult<u8> {
    let location = FsPath::new(location)?;
    let c = location.as_c_str();
    py.detach(|| lock::lock_state(c))
        .map(|state| state as u8)
        .map_err(|errno| errno_error(py, errno, location.as_bytes()))
}

/// Remove a leftover `session.next` only while no live writer can hold the lock.
#[pyfunction]
fn break_stale_lock(py: Python<'_>, location: &Bound<'_, PyAny>) -> PyResult<bool> {
    let location = FsPath::new(location)?;
    let c = location.as_c_str();
    py.detach(|| lock::break_stale_lock(c))
        .map_err(|error| match error {
            lock::BreakError::Location(errno) => errno_error(py, errno, location.as_bytes()),
            lock::BreakError::Next(errno) => errno_error(
                py,
                errno,
                &join(location.as_bytes(), lock::NEXT_NAME.to_bytes()),
            ),
        })
}

/// A `bytes` object the saving thread reads without the interpreter: bytes are
/// immutable, and the owned reference keeps them alive until the save is done.
struct HeldBytes {
    owner: Option<Py<PyBytes>>,
    ptr: *const u8,
    len: usize,
}

// Only `write(2)` reads the memory.
unsafe impl Send for HeldBytes {}

impl Drop for HeldBytes {
    /// Release the bytes promptly. Inside `submit` (a caller's thread, holding
    /// the GIL), at once. Elsewhere (the saving thread, which never waits for
    /// the interpreter: it saves on while a caller holds the GIL), the reference
    /// goes to `RELEASED` and the interpreter's main thread drops it at its next
    /// check for pending calls: dropped there without the interpreter, PyO3
    /// would leave the decref to the next call into the extension, keeping a
    /// saved (possibly large) checkpoint in memory until then.
    fn drop(&mut self) {
        let Some(owner) = self.owner.take() else {
            return;
        };
        if HOLDS_GIL.with(Cell::get) {
            drop(owner);
            return;
        }
        RELEASED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(owner.into_ptr() as usize);
        // One pending call drains every reference queued until it runs. None
        // once the interpreter is shutting down: what is queued is then left.
        // None before Python 3.13 either: there, scheduling a call from a
        // thread other than the main one recomputes the interpreter's "look
        // for work" flag as that thread sees it, and clears a signal the main
        // thread has yet to handle: its handler would then wait, for ever if
        // the main thread never blocks. The writer's next call (and the end
        // of every flush) drains the queue instead.
        if PENDING_CALLS_FROM_ANY_THREAD.load(AtomicOrdering::Relaxed)
            && !RELEASE_SCHEDULED.swap(true, AtomicOrdering::AcqRel)
            && (unsafe { pyo3::ffi::Py_IsInitialized() } == 0
                || unsafe {
                    pyo3::ffi::Py_AddPendingCall(Some(release_queued), std::ptr::null_mut())
                } != 0)
        {
            // Not scheduled (the queue of pending calls is full, or shutdown):
            // the next submission drains the queue instead.
            RELEASE_SCHEDULED.store(false, AtomicOrdering::Release);
        }
    }
}

thread_local! {
    /// Whether this thread is inside `CheckpointWorker::submit`, holding the
    /// GIL: the stable ABI of Python 3.10 has no call that tells.
    static HOLDS_GIL: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as holding the GIL until dropped (see `HOLDS_GIL`).
struct HoldingGil {
    previous: bool,
}

impl HoldingGil {
    fn mark(_py: Python<'_>) -> Self {
        Self {
            previous: HOLDS_GIL.with(|holds| holds.replace(true)),
        }
    }
}

impl Drop for HoldingGil {
    fn drop(&mut self) {
        HOLDS_GIL.with(|holds| holds.set(self.previous));
    }
}

/// References to `bytes` the saving thread let go of, as raw object pointers,
/// waiting for a thread attached to the interpreter to drop them.
static RELEASED: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// Whether a pending call to `release_queued` is scheduled.
static RELEASE_SCHEDULED: AtomicBool = AtomicBool::new(false);
/// Whether the running interpreter (3.13 and later) lets a thread other than
/// the main one schedule a pending call without losing a signal; set at import.
static PENDING_CALLS_FROM_ANY_THREAD: AtomicBool = AtomicBool::new(false);

/// Drop the references in `RELEASED`: run by the interpreter's main thread as
/// a pending call, and at each submission. The caller holds the GIL.
extern "C" fn release_queued(_: *mut std::ffi::c_void) -> std::ffi::c_int {
    // Cleared first: a reference queued from now on schedules another call.
    RELEASE_SCHEDULED.store(false, AtomicOrdering::Release);
    let queued = std::mem::take(&mut *RELEASED.lock().unwrap_or_else(PoisonError::into_inner));
    for object in queued {
        unsafe { pyo3::ffi::Py_DecRef(object as *mut pyo3::ffi::PyObject) };
    }
    0
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// How often a blocked `flush` looks for a signal (Ctrl-C) to raise.
const SIGNAL_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// The native worker of `CheckpointWriter`: a Rust thread that saves with the
/// same plan as `save`, never holding the GIL. The writer documents the behaviour.
#[pyclass(module = "sessionstore._native", frozen)]
struct CheckpointWorker {
    worker: checkpoint_worker::Worker<HeldBytes>,
    paths: SavePaths,
    codes: Py<PyBytes>,
    /// A slotted plan's rebuild codes, `codes` being its in-place ones (unused
    /// by a replace plan).
    rebuild: Py<PyBytes>,
}

impl CheckpointWorker {
    /// Stop the thread and wait for it to end, raising a signal's exception
    /// (Ctrl-C) meanwhile: a save blocked in the kernel may never end.
    fn stop_until_ended(&self, py: Python<'_>) -> PyResult<()> {
        while !py.detach(|| self.worker.stop(Some(SIGNAL_CHECK))) {
            py.check_signals()?;
        }
        Ok(())
    }

    fn error(&self, py: Python<'_>, error: checkpoint_worker::Error) -> PyErr {
        match error {
            checkpoint_worker::Error::Slotted(failure) => slotted_error(
                py,
                failure,
                &self.paths.location,
                self.codes.bind(py),
                self.rebuild.bind(py),
            ),
            checkpoint_worker::Error::Replace(error) => {
                save_error(py, error, &self.paths, self.codes.bind(py))
            }
        }
    }
}

#[pymethods]
impl CheckpointWorker {
    #[new]
    fn new(
        location: &Bound<'_, PyAny>,
        codes: &Bound<'_, PyBytes>,
        next_name: &Bound<'_, PyAny>,
        target: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let paths = SavePaths {
            location: FsPath::new(location)?.as_bytes().to_vec(),
            next_name: FsPath::new(next_name)?.as_bytes().to_vec(),
            target: FsPath::new(target)?.as_bytes().to_vec(),
        };
        let plan = checkpoint_worker::Plan::Replace {
            location: c_path(&paths.location)?,
            next_name: c_path(&paths.next_name)?,
            target: c_path(&paths.target)?,
            codes: codes.as_bytes().to_vec(),
        };
        let worker = checkpoint_worker::Worker::start(plan, "sessionstore-writer".into())?;
        Ok(Self {
            worker,
            paths,
            codes: codes.clone().unbind(),
            rebuild: codes.clone().unbind(),
        })
    }

    /// The worker of a slotted storage: it runs the plan `save_slotted` runs.
    #[staticmethod]
    fn slotted(
        location: &Bound<'_, PyAny>,
        in_place: &Bound<'_, PyBytes>,
        rebuild: &Bound<'_, PyBytes>,
    ) -> PyResult<Self> {
        let paths = SavePaths {
            location: FsPath::new(location)?.as_bytes().to_vec(),
            next_name: slotted::NEXT_NAME.to_bytes().to_vec(),
            target: slotted::SLOTS_NAME.to_bytes().to_vec(),
        };
        let plan = checkpoint_worker::Plan::Slotted {
            location: c_path(&paths.location)?,
            in_place: in_place.as_bytes().to_vec(),
            rebuild: rebuild.as_bytes().to_vec(),
        };
        let worker = checkpoint_worker::Worker::start(plan, "sessionstore-writer".into())?;
        Ok(Self {
            worker,
            paths,
            codes: in_place.clone().unbind(),
            rebuild: rebuild.clone().unbind(),
        })
    }

    fn submit(&self, py: Python<'_>, data: &Bound<'_, PyBytes>) -> PyResult<()> {
        // What a pending call could not release yet.
        release_queued(std::ptr::null_mut());
        let bytes = data.as_bytes();
        let held = HeldBytes {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
            owner: Some(data.clone().unbind()),
        };
        // A checkpoint still waiting is replaced, and released, right here.
        let holding = HoldingGil::mark(py);
        let submitted = self.worker.submit(held);
        drop(holding);
        submitted.map_err(|refused| match refused {
            checkpoint_worker::Refused::Closed => closed_error(
                py,
                "checkpoint writer of {} is closed",
                &self.paths.location,
            ),
            checkpoint_worker::Refused::Failed(error) => self.error(py, error),
        })
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let flush = self
            .worker
            .begin_flush()
            .map_err(|error| self.error(py, error))?;
        loop {
            match py.detach(|| self.worker.wait(flush, SIGNAL_CHECK)) {
                Some(outcome) => {
                    // What the saves that settled let go of.
                    release_queued(std::ptr::null_mut());
                    return outcome.map_err(|error| self.error(py, error));
                }
                None => py.check_signals()?,
            }
        }
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        // A later call flushes and stops again: nothing to do after a close that
        // returned, the rest of the work after one a signal interrupted.
        if !self.worker.mark_closed() {
            if let Some(error) = self.worker.take_error() {
                return Err(self.error(py, error));
            }
        }
        let flushed = self.flush(py);
        // The thread is stopped even when the flush raised (a signal, say): as
        // with `finally`, an error while stopping wins, the flush's as its context.
        let stopped = self.stop_until_ended(py);
        release_queued(std::ptr::null_mut());
        match (flushed, stopped) {
            (flushed, Ok(())) => flushed,
            (Ok(()), Err(stopping)) => Err(stopping),
            (Err(flushing), Err(stopping)) => {
                stopping.set_context(py, Some(flushing));
                Err(stopping)
            }
        }
    }

    fn stop(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let timeout = std::time::Duration::try_from_secs_f64(timeout)
            .map_err(|err| PyValueError::new_err(format!("timeout: {err}")))?;
        Ok(py.detach(|| self.worker.stop(Some(timeout))))
    }

    /// Hold the thread between saves. A signal's exception raised while waiting
    /// for the save in flight lets the thread go on, as if never paused.
    fn pause(&self, py: Python<'_>) -> PyResult<()> {
        while !py.detach(|| self.worker.pause(SIGNAL_CHECK)) {
            if let Err(err) = py.check_signals() {
                self.worker.resume();
                return Err(err);
            }
        }
        Ok(())
    }

    fn resume(&self) {
        self.worker.resume();
    }

    #[getter]
    fn saves(&self) -> u64 {
        self.worker.saves()
    }

    /// (submitted, saves run, saves failed, coalesced, bytes saved, the latest
    /// save error, durations of the latest successful saves in ns), as
    /// `sessionstore._writer_stats.RawStats` reads them.
    #[allow(clippy::type_complexity)]
    fn stats(&self, py: Python<'_>) -> (u64, u64, u64, u64, u64, Option<PyErr>, Vec<u64>) {
        release_queued(std::ptr::null_mut());
        let stats = self.worker.stats();
        let last = stats.last_failure.map(|error| self.error(py, error));
        (
            stats.submitted,
            stats.saves,
            stats.failures,
            stats.coalesced,
            stats.bytes_saved,
            last,
            stats.latencies,
        )
    }

    #[getter]
    fn closed(&self) -> bool {
        self.worker.is_closed()
    }
}

/// A session held across saves (`HeldSession`'s native writer): the directory
/// open and locked from construction to `close`, each save run with the GIL
/// released. A lock inside serialises threads sharing it.
#[pyclass(module = "sessionstore._native", frozen)]
struct HeldWriter {
    held: Mutex<Option<held::Held>>,
    /// Set once `held` is emptied: read without the lock, which a save holds
    /// for as long as it runs.
    closed: AtomicBool,
    paths: SavePaths,
    /// The codes errors quote: the save's, and the slotted rebuild's.
    codes: Py<PyBytes>,
    rebuild: Py<PyBytes>,
    release: Py<PyBytes>,
}

impl HeldWriter {
    fn closed_error(&self, py: Python<'_>) -> PyErr {
        closed_error(py, "held session {} is closed", &self.paths.location)
    }

    /// Take the held session out, if still there; `closed` is true from then on.
    fn take(&self, held: &mut Option<held::Held>) -> Option<held::Held> {
        self.closed.store(true, AtomicOrdering::Release);
        held.take()
    }

    fn slotted_error(
        &self,
        py: Python<'_>,
        failure: slotted::Failure,
        codes: &Py<PyBytes>,
    ) -> PyErr {
        slotted_error(
            py,
            failure,
            &self.paths.location,
            codes.bind(py),
            self.rebuild.bind(py),
        )
    }
}

#[pymethods]
impl HeldWriter {
    /// Open and lock `location` with the `acquire` codes; `slotted` says which
    /// layout `save` (and `rebuild`) write.
    #[new]
    fn new(
        py: Python<'_>,
        location: &Bound<'_, PyAny>,
        acquire: &Bound<'_, PyBytes>,
        save: &Bound<'_, PyBytes>,
        rebuild: &Bound<'_, PyBytes>,
        release: &Bound<'_, PyBytes>,
        slotted: bool,
    ) -> PyResult<Self> {
        let location = FsPath::new(location)?.as_bytes().to_vec();
        let target = if slotted {
            slotted::SLOTS_NAME
        } else {
            slotted::CHECKPOINT_NAME
        };
        let paths = SavePaths {
            location,
            next_name: slotted::NEXT_NAME.to_bytes().to_vec(),
            target: target.to_bytes().to_vec(),
        };
        let plan = if slotted {
            held::slotted(save.as_bytes(), rebuild.as_bytes())
        } else {
            held::replace(save.as_bytes())
        };
        let c_location = c_path(&paths.location)?;
        let codes = acquire.as_bytes();
        let release_codes = release.as_bytes().to_vec();
        let held = py
            .detach(|| held::Held::acquire(c_location, codes, plan, release_codes))
            .map_err(|failure| slotted_error(py, failure, &paths.location, acquire, rebuild))?;
        Ok(Self {
            held: Mutex::new(Some(held)),
            closed: AtomicBool::new(false),
            paths,
            codes: save.clone().unbind(),
            rebuild: rebuild.clone().unbind(),
            release: release.clone().unbind(),
        })
    }

    /// Save `data` on the held descriptors.
    fn save(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let outcome = detached_with(py, data, |checkpoint| {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            held.as_mut().map(|held| held.save(checkpoint))
        })?;
        match outcome {
            None => Err(self.closed_error(py)),
            Some(Ok(())) => Ok(()),
            Some(Err(checkpoint_worker::Error::Slotted(failure))) => {
                Err(self.slotted_error(py, failure, &self.codes))
            }
            Some(Err(checkpoint_worker::Error::Replace(error))) => {
                Err(save_error(py, error, &self.paths, self.codes.bind(py)))
            }
        }
    }

    /// Run the release codes, which release the lock; nothing once closed.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let outcome = py.detach(|| {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            self.take(&mut held).map(|mut held| held.release())
        });
        match outcome {
            Some(Err(failure)) => Err(self.slotted_error(py, failure, &self.release)),
            _ => Ok(()),
        }
    }

    /// In a forked child: close the inherited descriptors, which leaves the
    /// parent's lock held, and refuse saves from then on. A save that was in
    /// flight on another thread at the fork left the lock inside taken: then
    /// the descriptors stay open until the child exits or execs.
    fn forget(&self) {
        let mut held = match self.held.try_lock() {
            Ok(held) => held,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if let Some(mut held) = self.take(&mut held) {
            held.forget();
        }
    }

    /// Whether `close` (or `forget`) ran.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(AtomicOrdering::Acquire)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let _ = NUL_IN_PATH.set(os_nul_in_path_message(m.py())?);
    PENDING_CALLS_FROM_ANY_THREAD.store(m.py().version_info() >= (3, 13), AtomicOrdering::Relaxed);
    m.add_function(wrap_pyfunction!(save_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(load_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(save_slotted, m)?)?;
    m.add_function(wrap_pyfunction!(load_slots, m)?)?;
    m.add_function(wrap_pyfunction!(lock_state, m)?)?;
    m.add_function(wrap_pyfunction!(break_stale_lock, m)?)?;
    m.add_function(wrap_pyfunction!(listing::list_sessions, m)?)?;
    m.add_function(wrap_pyfunction!(listing::scan_sessions, m)?)?;
    m.add_class::<CheckpointWorker>()?;
    m.add_class::<HeldWriter>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::join;

    #[test]
    fn join_matches_posixpath() {
        assert_eq!(join(b"a", b"b"), b"a/b");
        assert_eq!(join(b"a/", b"b"), b"a/b");
        assert_eq!(join(b"/", b"b"), b"/b");
        assert_eq!(join(b"a//", b"b"), b"a//b");
        assert_eq!(join(b"", b"b"), b"b");
        assert_eq!(join(b"a", b"/b"), b"/b");
    }
}
