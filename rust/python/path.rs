//! Paths between Python and the syscalls: `os.fsencode` and `os.fsdecode` as
//! the extension does them, and a NUL refused in the interpreter's words.

use std::ffi::{CStr, CString};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString};

use crate::posix;

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

/// Ask the interpreter, once, what it says of a path with a NUL inside.
pub fn init(py: Python<'_>) -> PyResult<()> {
    let _ = NUL_IN_PATH.set(os_nul_in_path_message(py)?);
    Ok(())
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
pub fn c_path(path: &[u8]) -> PyResult<CString> {
    posix::c_path(path).ok_or_else(nul_in_path)
}

/// Whether the interpreter's file system encoding is UTF-8 with surrogateescape
/// (asked once): then a name's UTF-8 form is its file system form, and a valid
/// UTF-8 name decodes to the `str` `os.fsdecode` gives. Under another locale
/// every name goes through the interpreter's own codec, as `os` does.
pub fn fs_is_utf8(py: Python<'_>) -> bool {
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
pub fn fs_name<'py>(py: Python<'py>, name: &[u8]) -> PyResult<Bound<'py, PyString>> {
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
pub struct FsPath<'py> {
    // Keeps the memory behind `ptr` alive.
    _holder: Bound<'py, PyAny>,
    ptr: *const u8,
    len: usize,
}

impl<'py> FsPath<'py> {
    pub fn new(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
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

    pub fn as_bytes(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_c_str(&self) -> &CStr {
        // Both sources end their bytes with a NUL, and none is inside (checked).
        unsafe {
            CStr::from_bytes_with_nul_unchecked(std::slice::from_raw_parts(self.ptr, self.len + 1))
        }
    }
}
