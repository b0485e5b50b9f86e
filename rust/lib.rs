//! `sessionstore._native`: the native writer.
//!
//! The plain-Rust core (one module per sequence, no Python types, tested by
//! `cargo test`) and, in `python`, the PyO3 layer that gives it its Python face.

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
pub mod posix;
pub mod save;
pub mod save_plan;
pub mod slots_format;
pub mod slotted;
#[cfg(test)]
mod test_dir;

mod python;

#[pyo3::pymodule]
fn _native(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    use pyo3::types::PyModuleMethods;
    use pyo3::wrap_pyfunction;

    python::init(m.py())?;
    m.add_function(wrap_pyfunction!(python::functions::save_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(python::functions::load_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(python::functions::save_slotted, m)?)?;
    m.add_function(wrap_pyfunction!(python::functions::load_slots, m)?)?;
    m.add_function(wrap_pyfunction!(python::functions::lock_state, m)?)?;
    m.add_function(wrap_pyfunction!(python::functions::break_stale_lock, m)?)?;
    m.add_function(wrap_pyfunction!(python::listing::list_sessions, m)?)?;
    m.add_function(wrap_pyfunction!(python::listing::scan_sessions, m)?)?;
    m.add_class::<python::checkpoint_worker::CheckpointWorker>()?;
    m.add_class::<python::held_writer::HeldWriter>()?;
    python::add_plan_constants(m)?;
    Ok(())
}
