//! Checkpoint bytes borrowed from Python objects for a save without the GIL.

use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use crate::save::Checkpoint;

/// The bytes of `data`, borrowed: `bytes` lend their memory directly; a
/// `bytearray` through a memoryview of it, whose export pins the memory (the
/// bytearray cannot resize) until the returned keeper is dropped. Any other
/// buffer is copied into `bytes`: the stable ABI of Python 3.10, which the
/// extension is built against, offers no way to borrow its memory.
pub fn borrow_checkpoint<'py>(
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
pub fn detached_with<T, F>(py: Python<'_>, data: &Bound<'_, PyAny>, work: F) -> PyResult<T>
where
    T: Send,
    F: Send + FnOnce(Checkpoint) -> T,
{
    let (checkpoint, keeper) = borrow_checkpoint(data)?;
    let outcome = py.detach(move || work(checkpoint));
    drop(keeper);
    Ok(outcome)
}
