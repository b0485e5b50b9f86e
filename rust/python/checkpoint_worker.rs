//! The `CheckpointWorker` class over `crate::checkpoint_worker`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::checkpoint_worker;
use crate::python::error::{closed_error, save_error, SavePaths};
use crate::python::held_bytes::{release_queued, HeldBytes, HoldingGil};
use crate::python::path::{c_path, FsPath};
use crate::save::SaveError;
use crate::save_plan;

/// How often a blocked `flush` looks for a signal (Ctrl-C) to raise.
pub const SIGNAL_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// The native worker of `CheckpointWriter`: a Rust thread that saves with the
/// same plan as `save`, never holding the GIL. The writer documents the behaviour.
#[pyclass(module = "sessionstore._native", frozen)]
pub struct CheckpointWorker {
    worker: checkpoint_worker::Worker<HeldBytes>,
    paths: SavePaths,
    codes: Py<PyBytes>,
    /// A slotted plan's rebuild codes, `codes` being its in-place ones.
    rebuild: Option<Py<PyBytes>>,
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

    fn error(&self, py: Python<'_>, error: SaveError) -> PyErr {
        save_error(
            py,
            error,
            &self.paths,
            self.codes.bind(py),
            self.rebuild.as_ref().map(|rebuild| rebuild.bind(py)),
        )
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
            rebuild: None,
        })
    }

    /// The worker of a slotted storage: it runs the plan `save_slotted` runs.
    #[staticmethod]
    fn slotted(
        location: &Bound<'_, PyAny>,
        in_place: &Bound<'_, PyBytes>,
        rebuild: &Bound<'_, PyBytes>,
    ) -> PyResult<Self> {
        let paths = SavePaths::library(FsPath::new(location)?.as_bytes(), save_plan::SLOTS_NAME);
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
            rebuild: Some(rebuild.clone().unbind()),
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
