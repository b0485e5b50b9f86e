//! The PyO3 layer: the only code that knows Python. Each function and class
//! converts its arguments, runs the plain-Rust core with the GIL released, and
//! turns the core's failures into the exceptions the fallback raises for the
//! same failure.

pub mod buffer;
pub mod checkpoint_worker;
pub mod error;
pub mod functions;
pub mod held_bytes;
pub mod held_writer;
pub mod listing;
pub mod path;

use pyo3::{PyResult, Python};

/// What the module asks the interpreter once, when it is imported.
pub fn init(py: Python<'_>) -> PyResult<()> {
    path::init(py)?;
    held_bytes::init(py);
    Ok(())
}
