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

use pyo3::prelude::*;
use pyo3::types::PyModule;

use crate::save_plan;

/// What the module asks the interpreter once, when it is imported.
pub fn init(py: Python<'_>) -> PyResult<()> {
    path::init(py)?;
    held_bytes::init(py);
    Ok(())
}

/// The step codes and file names of `crate::save_plan`, as module constants
/// named as `SaveStep` and `_naming` name them.
pub fn add_plan_constants(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for (name, code) in save_plan::STEPS {
        m.add(*name, *code)?;
    }
    for (name, file) in save_plan::FILE_NAMES {
        m.add(name, file.to_string_lossy())?;
    }
    Ok(())
}
