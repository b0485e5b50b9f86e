//! The background saver behind `CheckpointWriter`: one thread, one slot.
//!
//! Plain Rust, without Python: the thread never needs the interpreter, so the
//! harness keeps running while a save writes and flushes. Submissions land in a
//! one-place slot (latest wins); the thread empties the slot, runs the same
//! save plan as a direct save (`save::save`, or `slotted::save_slotted` for the
//! slotted layout), and records the outcome.
//!
//! Checkpoints are numbered in submission order. `settled` is the newest number
//! whose fate is known: saved (`durable`) or lost to a failed save. A failure
//! drops the checkpoint waiting behind it, and submissions are refused until
//! the error has been taken by a caller, so nothing is saved behind the back
//! of an error nobody has seen.

use std::collections::VecDeque;
use std::ffi::CString;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::save::{self, Checkpoint, Names, SaveError};
use crate::slotted::save_slotted;

/// Everything one save needs, owned, so the thread can keep it.
pub enum Plan {
    /// The replace layout's plan, as `save::save` runs it.
    Replace {
        location: CString,
        next_name: CString,
        target: CString,
        codes: Vec<u8>,
    },
    /// The slotted layout's plan, as `slotted::save_slotted` runs it.
    Slotted {
        location: CString,
        in_place: Vec<u8>,
        rebuild: Vec<u8>,
    },
}

impl Plan {
    fn run(&self, data: &[u8]) -> Result<(), SaveError> {
        match self {
            Self::Replace {
                location,
                next_name,
                target,
                codes,
            } => {
                let names = Names {
                    location,
                    next_name,
                    target,
                };
                save::save(&names, codes, Checkpoint::of(data))
            }
            Self::Slotted {
                location,
                in_place,
                rebuild,
            } => save_slotted(location, in_place, rebuild, Checkpoint::of(data)),
        }
    }
}

/// Why a submission was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The worker was closed.
    Closed,
    /// A background save failed and nobody has seen the error yet (now taken).
    Failed(SaveError),
}

/// What a flush waits for: the newest submission when it began, and how many
/// saves had failed by then.
#[derive(Debug, Clone, Copy)]
pub struct Flush {
    target: u64,
    failures: u64,
}

/// How many of the latest successful saves the latency figures cover (the
/// fallback's `LATENCY_WINDOW`).
pub const LATENCY_WINDOW: usize = 1024;

/// The counters `stats` reports, as the fallback keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub submitted: u64,
    pub saves: u64,
    pub failures: u64,
    /// Submissions replaced by a newer one before their turn.
    pub coalesced: u64,
    pub bytes_saved: u64,
    pub last_failure: Option<SaveError>,
    /// Durations of the latest successful saves in nanoseconds, oldest first.
    pub latencies: Vec<u64>,
}

struct Slot<D> {
    waiting: Option<D>,
    coalesced: u64,
    bytes_saved: u64,
    latencies: VecDeque<u64>,
    submitted: u64,
    durable: u64,
    settled: u64,
    saves: u64,
    failures: u64,
    error: Option<SaveError>,
    last_failure: Option<SaveError>,
    closed: bool,
    stopping: bool,
    running: bool,
    paused: bool,
    saving: bool,
}

struct Shared<D> {
    slot: Mutex<Slot<D>>,
    changed: Condvar,
    plan: Plan,
}

impl<D> Shared<D> {
    fn lock(&self) -> MutexGuard<'_, Slot<D>> {
        // The slot's fields are updated together and never left half done, so
        // a panic elsewhere cannot have broken it.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The saving thread and the slot it serves. Dropping it lets the thread save
/// what waits and end, without waiting for it.
pub struct Worker<D: AsRef<[u8]> + Send + 'static> {
    shared: Arc<Shared<D>>,
    /// The process that started the thread: a forked child has no such thread.
    pid: u32,
}

impl<D: AsRef<[u8]> + Send + 'static> Worker<D> {
    /// Start the thread, named `name`, saving with `plan`.
    pub fn start(plan: Plan, name: String) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                waiting: None,
                coalesced: 0,
                bytes_saved: 0,
                latencies: VecDeque::with_capacity(LATENCY_WINDOW),
                submitted: 0,
                durable: 0,
                settled: 0,
                saves: 0,
                failures: 0,
                error: None,
                last_failure: None,
                closed: false,
                stopping: false,
                running: true,
                paused: false,
                saving: false,
            }),
            changed: Condvar::new(),
            plan,
        });
        let served = Arc::clone(&shared);
        // The thread runs no signal handler: it takes none of the process's
        // signals, which go to a thread that handles them.
        crate::posix::with_signals_blocked(|| {
            thread::Builder::new()
                .name(name)
                .spawn(move || work(&served))
        })?;
        Ok(Self {
            shared,
            pid: std::process::id(),
        })
    }

    /// Put `data` in the slot, replacing what waits there.
    pub fn submit(&self, data: D) -> Result<(), Refused> {
        let mut slot = self.shared.lock();
        if slot.closed {
            return Err(Refused::Closed);
        }
        if let Some(error) = slot.error.take() {
            return Err(Refused::Failed(error));
        }
        let replaced = slot.waiting.replace(data);
        slot.coalesced += u64::from(replaced.is_some());
        slot.submitted += 1;
        drop(slot);
        self.shared.changed.notify_all();
        drop(replaced);
        Ok(())
    }

    /// Begin a flush: the error nobody has seen yet, or what to wait for.
    pub fn begin_flush(&self) -> Result<Flush, SaveError> {
        let mut slot = self.shared.lock();
        match slot.error.take() {
            Some(error) => Err(error),
            None => Ok(Flush {
                target: slot.submitted,
                failures: slot.failures,
            }),
        }
    }

    /// Wait up to `timeout` for `flush`'s checkpoint to settle: `None` while it
    /// has not, else whether it (or a newer one) was saved. A save that failed
    /// after the flush began is reported to it even when another caller took
    /// the error first.
    pub fn wait(&self, flush: Flush, timeout: Duration) -> Option<Result<(), SaveError>> {
        let slot = self.shared.lock();
        let (mut slot, _) = self
            .shared
            .changed
            .wait_timeout_while(slot, timeout, |slot| slot.settled < flush.target)
            .unwrap_or_else(PoisonError::into_inner);
        if slot.settled < flush.target {
            return None;
        }
        if slot.durable < flush.target && slot.failures > flush.failures {
            if let Some(error) = slot.error.take().or(slot.last_failure) {
                return Some(Err(error));
            }
        }
        Some(Ok(()))
    }

    /// Refuse further submissions; false when that was already so.
    pub fn mark_closed(&self) -> bool {
        let mut slot = self.shared.lock();
        !std::mem::replace(&mut slot.closed, true)
    }

    /// Refuse further submissions and let the thread end once nothing waits;
    /// wait for it up to `timeout` (for ever with `None`). True when it ended.
    pub fn stop(&self, timeout: Option<Duration>) -> bool {
        let mut slot = self.shared.lock();
        slot.closed = true;
        slot.stopping = true;
        self.shared.changed.notify_all();
        let running = |slot: &mut Slot<D>| slot.running;
        slot = match timeout {
            None => self
                .shared
                .changed
                .wait_while(slot, running)
                .unwrap_or_else(PoisonError::into_inner),
            Some(timeout) => {
                self.shared
                    .changed
                    .wait_timeout_while(slot, timeout, running)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
        !slot.running
    }

    /// Hold the thread between saves: start none until `resume`, and wait up
    /// to `timeout` for a save in flight to end; whether none is in flight. A
    /// process forks while paused, so the child inherits no descriptor, and no
    /// lock, of a save.
    pub fn pause(&self, timeout: Duration) -> bool {
        let mut slot = self.shared.lock();
        slot.paused = true;
        let (slot, _) = self
            .shared
            .changed
            .wait_timeout_while(slot, timeout, |slot| slot.saving)
            .unwrap_or_else(PoisonError::into_inner);
        !slot.saving
    }

    /// Let the thread save again after `pause`.
    pub fn resume(&self) {
        self.shared.lock().paused = false;
        self.shared.changed.notify_all();
    }

    /// The error of a background save nobody has seen yet, now taken.
    pub fn take_error(&self) -> Option<SaveError> {
        self.shared.lock().error.take()
    }

    /// How many saves ran, failed ones included.
    pub fn saves(&self) -> u64 {
        self.shared.lock().saves
    }

    /// What the thread has done so far.
    pub fn stats(&self) -> Stats {
        let slot = self.shared.lock();
        Stats {
            submitted: slot.submitted,
            saves: slot.saves,
            failures: slot.failures,
            coalesced: slot.coalesced,
            bytes_saved: slot.bytes_saved,
            last_failure: slot.last_failure,
            latencies: slot.latencies.iter().copied().collect(),
        }
    }

    /// Whether submissions are refused.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

impl<D: AsRef<[u8]> + Send + 'static> Drop for Worker<D> {
    fn drop(&mut self) {
        // In a forked child no thread serves the slot, and its lock may have
        // been held by one at the fork: taking it could wait for ever.
        if std::process::id() != self.pid {
            return;
        }
        let mut slot = self.shared.lock();
        slot.closed = true;
        slot.stopping = true;
        self.shared.changed.notify_all();
    }
}

/// The thread: save what waits, one at a time, until told to stop and the slot
/// is empty. The slot is emptied before a save starts, so a submission during
/// the save waits for the next turn instead of being lost.
fn work<D: AsRef<[u8]>>(shared: &Shared<D>) {
    let mut slot = shared.lock();
    loop {
        slot = shared
            .changed
            .wait_while(slot, |slot| {
                !slot.stopping && (slot.waiting.is_none() || slot.paused)
            })
            .unwrap_or_else(PoisonError::into_inner);
        let Some(data) = slot.waiting.take() else {
            slot.running = false;
            shared.changed.notify_all();
            return;
        };
        let number = slot.submitted;
        slot.saving = true;
        drop(slot);
        let started = Instant::now();
        let outcome = shared.plan.run(data.as_ref());
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let length = data.as_ref().len() as u64;
        drop(data);
        slot = shared.lock();
        slot.saves += 1;
        if outcome.is_ok() {
            slot.bytes_saved += length;
            if slot.latencies.len() == LATENCY_WINDOW {
                slot.latencies.pop_front();
            }
            slot.latencies.push_back(took);
        }
        let dropped = match outcome {
            Ok(()) => {
                slot.durable = number;
                slot.settled = slot.settled.max(number);
                None
            }
            Err(error) => {
                slot.failures += 1;
                slot.error = Some(error);
                slot.last_failure = Some(error);
                slot.settled = slot.submitted;
                slot.waiting.take()
            }
        };
        if dropped.is_some() {
            // Released outside the lock, as dropping a checkpoint may cost, but
            // still while saving: `pause` (before a fork) then returns only once
            // the thread is done with every checkpoint it held.
            shared.changed.notify_all();
            drop(slot);
            drop(dropped);
            slot = shared.lock();
        }
        slot.saving = false;
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::save::{At, Failure, Part, Steps};
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    const DURABLE: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8, 9];
    const PATIENCE: Duration = Duration::from_secs(30);

    use crate::test_dir::TempDir;

    fn worker(location: &Path) -> Worker<Vec<u8>> {
        let plan = Plan::Replace {
            location: CString::new(location.as_os_str().as_bytes()).unwrap(),
            next_name: c"session.next".to_owned(),
            target: c"session".to_owned(),
            codes: DURABLE.to_vec(),
        };
        Worker::start(plan, "test-writer".into()).unwrap()
    }

    fn flush(worker: &Worker<Vec<u8>>) -> Result<(), SaveError> {
        let flush = worker.begin_flush()?;
        worker
            .wait(flush, PATIENCE)
            .expect("the save never settled")
    }

    #[test]
    fn the_last_submission_is_saved_after_flush() {
        let dir = TempDir::new("worker", "last");
        let worker = worker(&dir.0);
        for number in 0..1000 {
            worker
                .submit(format!("checkpoint {number}").into_bytes())
                .unwrap();
        }
        flush(&worker).unwrap();
        assert_eq!(fs::read(dir.0.join("session")).unwrap(), b"checkpoint 999");
        let saves = worker.saves();
        assert!((1..=1000).contains(&saves), "{saves} saves");
        assert!(worker.stop(None));
    }

    #[test]
    fn a_failed_save_is_reported_once_and_submissions_go_on() {
        let dir = TempDir::new("worker", "failed");
        fs::write(dir.0.join("session.next"), b"").unwrap();
        let worker = worker(&dir.0);
        worker.submit(b"lost".to_vec()).unwrap();
        assert!(matches!(
            flush(&worker),
            Err(SaveError {
                failure: Failure::Leftover,
                ..
            })
        ));
        assert_eq!(flush(&worker), Ok(()));
        fs::remove_file(dir.0.join("session.next")).unwrap();
        worker.submit(b"saved".to_vec()).unwrap();
        flush(&worker).unwrap();
        assert_eq!(fs::read(dir.0.join("session")).unwrap(), b"saved");
        assert_eq!(worker.saves(), 2);
    }

    #[test]
    fn a_pending_error_refuses_the_next_submission() {
        let dir = TempDir::new("worker", "refused");
        let gone = dir.0.join("gone");
        let worker = worker(&gone);
        worker.submit(b"nowhere".to_vec()).unwrap();
        let flush = worker.begin_flush().unwrap();
        // Wait without taking the error: the failure is counted as settled.
        drop(
            worker
                .shared
                .changed
                .wait_while(worker.shared.lock(), |slot| slot.settled < flush.target),
        );
        let refused = worker.submit(b"refused".to_vec()).unwrap_err();
        assert_eq!(
            refused,
            Refused::Failed(SaveError {
                failure: Failure::Os {
                    errno: libc::ENOENT,
                    at: At::Location
                },
                steps: Steps::Replace,
                part: Part::Given,
                cleanup: None
            })
        );
        assert_eq!(worker.begin_flush().map(drop), Ok(()));
        assert_eq!(worker.take_error(), None);
    }

    #[test]
    fn a_paused_worker_starts_no_save_until_resumed() {
        let dir = TempDir::new("worker", "paused");
        let worker = worker(&dir.0);
        assert!(worker.pause(PATIENCE));
        worker.submit(b"held".to_vec()).unwrap();
        thread::sleep(Duration::from_millis(50));
        assert_eq!(worker.saves(), 0);
        assert!(!dir.0.join("session").exists());
        worker.resume();
        flush(&worker).unwrap();
        assert_eq!(fs::read(dir.0.join("session")).unwrap(), b"held");
    }

    #[test]
    fn a_slotted_plan_saves_in_place_and_reports_its_own_errors() {
        let dir = TempDir::new("worker", "slotted");
        let plan = Plan::Slotted {
            location: CString::new(dir.0.as_os_str().as_bytes()).unwrap(),
            in_place: vec![1, 2, 10, 11, 12, 13, 14, 15, 16, 9],
            rebuild: vec![3, 4, 5, 6, 7, 8, 9],
        };
        let worker = Worker::start(plan, "test-writer".into()).unwrap();
        worker.submit(b"first".to_vec()).unwrap();
        flush(&worker).unwrap();
        let inode = fs::metadata(dir.0.join("session.slots")).unwrap().ino();
        worker.submit(b"second".to_vec()).unwrap();
        flush(&worker).unwrap();
        assert_eq!(
            fs::metadata(dir.0.join("session.slots")).unwrap().ino(),
            inode
        );
        let image = fs::read(dir.0.join("session.slots")).unwrap();
        assert!(image.windows(6).any(|w| w == b"second"));
        fs::write(dir.0.join("session"), b"").unwrap();
        worker.submit(b"refused".to_vec()).unwrap();
        assert_eq!(
            flush(&worker).map_err(|error| error.failure),
            Err(Failure::ReplaceLayout)
        );
    }

    #[test]
    fn a_forked_child_drops_its_copy_without_the_lock() {
        let dir = TempDir::new("worker", "forked");
        let worker = worker(&dir.0);
        // Held across the fork: in the child nobody will ever release it.
        let shared = Arc::clone(&worker.shared);
        let held = shared.lock();
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            drop(worker);
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        let deadline = std::time::Instant::now() + PATIENCE;
        let ended = loop {
            let ended = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
            if ended != 0 || std::time::Instant::now() > deadline {
                break ended;
            }
            thread::sleep(Duration::from_millis(10));
        };
        if ended == 0 {
            unsafe { libc::kill(child, libc::SIGKILL) };
            unsafe { libc::waitpid(child, &mut status, 0) };
        }
        drop(held);
        assert_eq!(ended, child, "the child hung dropping the worker");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn a_closed_worker_refuses_submissions_and_its_thread_ends() {
        let dir = TempDir::new("worker", "closed");
        let worker = worker(&dir.0);
        worker.submit(b"before".to_vec()).unwrap();
        assert!(worker.mark_closed());
        assert!(!worker.mark_closed());
        assert_eq!(worker.submit(b"after".to_vec()), Err(Refused::Closed));
        assert!(worker.stop(Some(PATIENCE)));
        assert!(worker.is_closed());
        assert_eq!(fs::read(dir.0.join("session")).unwrap(), b"before");
    }
}
