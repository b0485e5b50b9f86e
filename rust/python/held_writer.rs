//! The `HeldWriter` class over `crate::held`.

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Mutex, PoisonError, TryLockError};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::held;
use crate::python::buffer::detached_with;
use crate::python::error::{closed_error, save_error, SavePaths};
use crate::python::path::{c_path, FsPath};
use crate::save::SaveError;
use crate::save_plan;

/// A session held across saves (`HeldSession`'s native writer): the directory
/// open and locked from construction to `close`, each save run with the GIL
/// released. A lock inside serialises threads sharing it.
#[pyclass(module = "sessionstore._native", frozen)]
pub struct HeldWriter {
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

    /// The exception for `error` of a run of `codes`.
    fn error(&self, py: Python<'_>, error: SaveError, codes: &Py<PyBytes>) -> PyErr {
        save_error(
            py,
            error,
            &self.paths,
            codes.bind(py),
            Some(self.rebuild.bind(py)),
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
        let target = if slotted {
            save_plan::SLOTS_NAME
        } else {
            save_plan::CHECKPOINT_NAME
        };
        let paths = SavePaths::library(FsPath::new(location)?.as_bytes(), target);
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
            .map_err(|error| save_error(py, error, &paths, acquire, Some(rebuild)))?;
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
            Some(Err(error)) => Err(self.error(py, error, &self.codes)),
        }
    }

    /// Run the release codes, which release the lock; nothing once closed.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let outcome = py.detach(|| {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            self.take(&mut held).map(|mut held| held.release())
        });
        match outcome {
            Some(Err(error)) => Err(self.error(py, error, &self.release)),
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
