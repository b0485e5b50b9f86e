//! Failures of the plain-Rust core as the exceptions the fallback raises for
//! the same failure, written once for every function and class.

use std::ffi::CStr;

use pyo3::exceptions::{PyMemoryError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::posix;
use crate::python::path::fs_name;
use crate::save::{At, Cleanup, Failure, Part, SaveError, Steps};
use crate::save_plan;

/// `os.path.join(dir, name)` on bytes, so error paths read as the fallback's do.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
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
pub fn os_error(
    py: Python<'_>,
    errno: posix::Errno,
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

pub fn errno_error(py: Python<'_>, errno: posix::Errno, filename: &[u8]) -> PyErr {
    os_error(py, errno, &posix::describe(errno), Some(filename), None)
}

/// The error of a load's open or read of `filename`: "not a regular file" for
/// a FIFO, a device or a socket, MemoryError when the memory cannot be had,
/// as the fallback says them.
pub fn read_error(py: Python<'_>, errno: posix::Errno, filename: &[u8]) -> PyErr {
    match errno {
        posix::NOT_REGULAR => os_error(py, errno, "not a regular file", Some(filename), None),
        libc::ENOMEM => PyMemoryError::new_err(()),
        _ => errno_error(py, errno, filename),
    }
}

/// `sessionstore._errors.<factory>(next_path)`, the library's LockedStorageError.
pub fn locked_error(py: Python<'_>, factory: &str, next_path: &[u8]) -> PyErr {
    let made = py
        .import("sessionstore._errors")
        .and_then(|errors| errors.getattr(factory))
        .and_then(|factory| factory.call1((fs_name(py, next_path)?,)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(err) => err,
    }
}

/// The paths a save's errors name, as the caller gave them.
pub struct SavePaths {
    pub location: Vec<u8>,
    pub next_name: Vec<u8>,
    pub target: Vec<u8>,
}

impl SavePaths {
    /// The paths of a save in `location` writing the library's `target` file
    /// through its next file.
    pub fn library(location: &[u8], target: &CStr) -> Self {
        Self {
            location: location.to_vec(),
            next_name: save_plan::NEXT_NAME.to_bytes().to_vec(),
            target: target.to_bytes().to_vec(),
        }
    }
}

/// `repr(codes)`, as an error message quotes a plan.
fn quoted(codes: &Bound<'_, PyBytes>) -> String {
    codes
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| format!("{:?}", codes.as_bytes()))
}

/// The exception for a failed save, as the fallback raises it: `codes` the
/// codes the save was given (a slotted save's in-place ones), `rebuild` a
/// slotted save's rebuild codes (quoted when the rebuild failed).
pub fn save_error(
    py: Python<'_>,
    error: SaveError,
    paths: &SavePaths,
    codes: &Bound<'_, PyBytes>,
    rebuild: Option<&Bound<'_, PyBytes>>,
) -> PyErr {
    let path = |name: &[u8]| join(&paths.location, name);
    let next_path = || path(&paths.next_name);
    let slots_path = || path(save_plan::SLOTS_NAME.to_bytes());
    let checkpoint_path = || path(save_plan::CHECKPOINT_NAME.to_bytes());
    let plan = || match error.part {
        Part::Rebuild => quoted(rebuild.unwrap_or(codes)),
        Part::Given => quoted(codes),
    };
    let err = match error.failure {
        Failure::Os { errno, at } => match at {
            At::Location => errno_error(py, errno, &paths.location),
            At::Next => errno_error(py, errno, &next_path()),
            At::Rename => os_error(
                py,
                errno,
                &posix::describe(errno),
                Some(&next_path()),
                Some(&path(&paths.target)),
            ),
            At::Checkpoint => errno_error(py, errno, &checkpoint_path()),
            At::Slots => errno_error(py, errno, &slots_path()),
        },
        Failure::NoProgress { at } => {
            let path = if at == At::Slots {
                slots_path()
            } else {
                next_path()
            };
            os_error(py, libc::EIO, "write made no progress", Some(&path), None)
        }
        Failure::Held => locked_error(py, "held", &next_path()),
        Failure::Leftover => locked_error(py, "leftover", &next_path()),
        Failure::ReplaceLayout => os_error(
            py,
            libc::EEXIST,
            "the session is in the replace layout; convert it first",
            Some(&checkpoint_path()),
            None,
        ),
        Failure::Corrupt(reason) | Failure::Format(reason) => {
            corrupt_error(py, &slots_path(), &reason.to_string())
        }
        Failure::Unsynced { errno, hide } => {
            let slots = slots_path();
            let err = errno_error(py, errno, &slots);
            // Hiding the unsynced record failed too: kept as the context of the
            // flush's error, which is still the one raised.
            if let Some(hide) = hide {
                err.set_context(py, Some(errno_error(py, hide, &slots)));
            }
            err
        }
        Failure::UnknownStep(code) => PyValueError::new_err(match error.steps {
            Steps::Replace => format!("unknown save step {code} in plan {}", plan()),
            Steps::Slotted => format!("unknown slotted save step {code} in {}", plan()),
        }),
        Failure::NotChosen => {
            PyValueError::new_err(format!("slot written before it was chosen in {}", plan()))
        }
        Failure::NoMemory => PyMemoryError::new_err(()),
    };
    // What failed while undoing the save is kept as the context of the error
    // (unless it has one already: hiding an unsynced record failed), never
    // raised in its place.
    let hid = matches!(error.failure, Failure::Unsynced { hide: Some(_), .. });
    let secondary = match error.cleanup.filter(|_| !hid) {
        None => None,
        Some(Cleanup::Close(errno)) => {
            Some(os_error(py, errno, &posix::describe(errno), None, None))
        }
        Some(Cleanup::Unlink(errno)) => Some(errno_error(py, errno, &paths.next_name)),
    };
    if secondary.is_some() {
        err.set_context(py, secondary);
    }
    err
}

/// `<module>.<class>(*args)`: an exception class of the library's own.
pub fn library_error<'py>(
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
pub fn closed_error(py: Python<'_>, template: &str, location: &[u8]) -> PyErr {
    let message = fs_name(py, location)
        .and_then(|location| PyString::new(py, template).call_method1("format", (location,)));
    match message {
        Ok(message) => PyValueError::new_err(message.unbind()),
        Err(err) => err,
    }
}

/// The library's CorruptCheckpointError for the slots file at `path`.
pub fn corrupt_error(py: Python<'_>, path: &[u8], reason: &str) -> PyErr {
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
