//! Checkpoints the saving thread holds without the interpreter, and their
//! release back to it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Learn, once, whether the running interpreter lets any thread schedule a
/// pending call (see `PENDING_CALLS_FROM_ANY_THREAD`).
pub fn init(py: Python<'_>) {
    PENDING_CALLS_FROM_ANY_THREAD.store(py.version_info() >= (3, 13), AtomicOrdering::Relaxed);
}

/// A `bytes` object the saving thread reads without the interpreter: bytes are
/// immutable, and the owned reference keeps them alive until the save is done.
pub struct HeldBytes {
    pub owner: Option<Py<PyBytes>>,
    pub ptr: *const u8,
    pub len: usize,
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
pub struct HoldingGil {
    previous: bool,
}

impl HoldingGil {
    pub fn mark(_py: Python<'_>) -> Self {
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
pub extern "C" fn release_queued(_: *mut std::ffi::c_void) -> std::ffi::c_int {
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
