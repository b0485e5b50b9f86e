//! The extension's functions: each converts its arguments, runs the plain-Rust
//! work with the GIL released, and turns a failure into the fallback's exception.

use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::python::buffer::detached_with;
use crate::python::error::{
    corrupt_error, errno_error, join, os_error, read_error, save_error, SavePaths,
};
use crate::python::path::FsPath;
use crate::save::{self, Names};
use crate::save_plan;
use crate::slotted;
use crate::{load, lock, posix};

/// Execute a save plan (`codes`) in `location`, with the GIL released throughout.
#[pyfunction]
#[pyo3(name = "save")]
pub fn save_checkpoint<'py>(
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
    let names = Names {
        location: location.as_c_str(),
        next_name: next_name.as_c_str(),
        target: target.as_c_str(),
    };
    let plan = codes.as_bytes();
    detached_with(py, data, move |checkpoint| {
        save::save(&names, plan, checkpoint)
    })?
    .map_err(|error| {
        let paths = SavePaths {
            location: location.as_bytes().to_vec(),
            next_name: next_name.as_bytes().to_vec(),
            target: target.as_bytes().to_vec(),
        };
        save_error(py, error, &paths, codes, None)
    })
}

/// Every byte of the file at `path`, read straight into the returned bytes.
#[pyfunction]
#[pyo3(name = "load")]
pub fn load_checkpoint<'py>(
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
    // On failure the file is closed as `opened` is dropped.
    let bytes = bytes?.cast_into::<PyBytes>()?;
    let dest = unsafe {
        load::Destination::from_raw(pyo3::ffi::PyBytes_AsString(bytes.as_ptr()).cast(), size)
    };
    let fd = opened.fd;
    let (filled, closed) = py.detach(move || {
        let filled = load::fill(&fd, dest);
        (filled, fd.close())
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

/// Execute a slotted save plan in `location`: `in_place`, or `rebuild` when
/// there is no slots file or the record does not fit; the GIL released throughout.
#[pyfunction]
pub fn save_slotted<'py>(
    py: Python<'py>,
    location: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    in_place: &Bound<'py, PyBytes>,
    rebuild: &Bound<'py, PyBytes>,
) -> PyResult<()> {
    let location = FsPath::new(location)?;
    let (c_location, codes, rebuild_codes) =
        (location.as_c_str(), in_place.as_bytes(), rebuild.as_bytes());
    detached_with(py, data, move |checkpoint| {
        slotted::save_slotted(c_location, codes, rebuild_codes, checkpoint)
    })?
    .map_err(|error| {
        let paths = SavePaths::library(location.as_bytes(), save_plan::SLOTS_NAME);
        save_error(py, error, &paths, in_place, Some(rebuild))
    })
}

/// The newest valid record of the slots file at `path` (with `previous`, the
/// one before it, or None), read straight into the returned bytes.
#[pyfunction]
#[pyo3(signature = (path, previous = false))]
pub fn load_slots<'py>(
    py: Python<'py>,
    path: &Bound<'py, PyAny>,
    previous: bool,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let path = FsPath::new(path)?;
    let name = path.as_bytes();
    let c = path.as_c_str();
    let fd = py
        .detach(|| posix::open_regular(c))
        .map_err(|errno| read_error(py, errno, name))?
        .0;
    let slots = &fd;
    let found = slotted::newest_records(
        if previous { 2 } else { 1 },
        || {
            py.detach(|| slotted::read_view(slots))
                .map_err(|error| match error {
                    slotted::ReadError::Os(errno) => errno_error(py, errno, name),
                    slotted::ReadError::Corrupt(reason) => {
                        corrupt_error(py, name, &reason.to_string())
                    }
                })
        },
        // Each record read straight into an uninitialised bytes object of its size.
        |view, slot, record| -> PyResult<Option<Bound<'py, PyBytes>>> {
            let length = pyo3::ffi::Py_ssize_t::try_from(record.length)
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
                .detach(move || unsafe {
                    slotted::read_record(slots, view, slot, dest.as_mut_ptr())
                })
                .map_err(|errno| errno_error(py, errno, name))?;
            Ok(whole.then_some(bytes))
        },
    );
    let closed = fd.close();
    let mut found = found?;
    closed.map_err(|errno| os_error(py, errno, &posix::describe(errno), None, None))?;
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
pub fn lock_state(py: Python<'_>, location: &Bound<'_, PyAny>) -> PyResult<u8> {
    let location = FsPath::new(location)?;
    let c = location.as_c_str();
    py.detach(|| lock::lock_state(c))
        .map(|state| state as u8)
        .map_err(|errno| errno_error(py, errno, location.as_bytes()))
}

/// Remove a leftover `session.next` only while no live writer can hold the lock.
#[pyfunction]
pub fn break_stale_lock(py: Python<'_>, location: &Bound<'_, PyAny>) -> PyResult<bool> {
    let location = FsPath::new(location)?;
    let c = location.as_c_str();
    py.detach(|| lock::break_stale_lock(c))
        .map_err(|error| match error {
            lock::BreakError::Location(errno) => errno_error(py, errno, location.as_bytes()),
            lock::BreakError::Next(errno) => errno_error(
                py,
                errno,
                &join(location.as_bytes(), save_plan::NEXT_NAME.to_bytes()),
            ),
        })
}
