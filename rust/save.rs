//! Executing a save plan: the codes of `sessionstore._save_plan.SaveStep`, in order.
//!
//! This is the replace layout's save sequence (docs/formats.md) as plain Rust, without Python, so the
//! extension can run all of it with the GIL released and `cargo test` can run it
//! at all. Errors name the path they concern by role; the caller spells it.

use std::ffi::CStr;

use crate::posix::{self, Errno, Fd};
use crate::save_plan::step;

const NEXT_FLAGS: libc::c_int = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
const NEXT_MODE: libc::mode_t = 0o600;

/// Bytes the writer reads while the GIL is released.
///
/// A raw view rather than a slice: the memory belongs to a Python object that
/// another thread may mutate (a `bytearray`), and it is only ever handed to
/// `write(2)`, never read by Rust code.
#[derive(Clone, Copy)]
pub struct Checkpoint {
    ptr: *const u8,
    len: usize,
}

// The pointer is only passed to write(2); the exporter keeps the memory alive.
unsafe impl Send for Checkpoint {}

impl Checkpoint {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// The memory must stay allocated for as long as the view is used.
    pub unsafe fn from_raw(ptr: *const u8, len: usize) -> Self {
        Self { ptr, len }
    }

    /// A view of a Rust slice (which outlives every use in a test).
    pub fn of(data: &[u8]) -> Self {
        Self {
            ptr: data.as_ptr(),
            len: data.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the bytes start, for a syscall that reads them (`pwritev`).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The bytes as a slice, for code that must read them itself (a checksum).
    ///
    /// # Safety
    /// The memory must stay allocated while the slice is used. A writer that
    /// changes it meanwhile (another thread and a `bytearray`) makes the data
    /// and what was read of it differ; the slotted layout's checksum then
    /// rejects the record on load, as for a torn write.
    pub unsafe fn as_slice(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Which path an error concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// the session directory
    Location,
    /// `location/next_name`
    Next,
    /// the rename, from `location/next_name` to `location/target`
    Rename,
}

/// Why a save failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A syscall failed with `errno`.
    Os { errno: Errno, at: At },
    /// `write` accepted nothing although bytes were left (EIO, as the fallback says).
    NoProgress,
    /// `flock` found a live writer holding the lock.
    Held,
    /// The next file exists: the leftover of a writer that died.
    Leftover,
    /// The plan holds a code that is not a step.
    UnknownStep(u8),
}

/// What went wrong undoing a failed save (secondary to the failure itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    Close(Errno),
    Unlink(Errno),
}

/// A failed save: the failure, and whatever failed while undoing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveError {
    pub failure: Failure,
    pub cleanup: Option<Cleanup>,
}

/// Why a step on the session directory failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirFailure {
    Os(Errno),
    /// `flock` found a live writer holding the lock.
    Held,
}

/// The session directory as a plan sees it: not open, open by the plan (which
/// closes it), or open by someone who lends it (a held session) and closes it.
#[derive(Debug, Default)]
pub enum SessionDir<'a> {
    #[default]
    Closed,
    Owned(Fd),
    Lent(&'a Fd),
}

impl SessionDir<'_> {
    /// The open directory; EBADF when it is not open, as a syscall on it says.
    pub fn fd(&self) -> Result<&Fd, Errno> {
        match self {
            Self::Closed => Err(libc::EBADF),
            Self::Owned(fd) => Ok(fd),
            Self::Lent(fd) => Ok(fd),
        }
    }

    /// The directory lent on, whoever owns it.
    pub fn lend(&self) -> SessionDir<'_> {
        self.fd().map_or(SessionDir::Closed, SessionDir::Lent)
    }

    /// Close the directory if it is this plan's; forget it either way.
    pub fn close(&mut self) -> Result<(), Errno> {
        match std::mem::take(self) {
            Self::Owned(fd) => fd.close(),
            Self::Closed | Self::Lent(_) => Ok(()),
        }
    }
}

/// Run `code` when it is one of the directory steps every plan shares
/// (`OPEN_DIR`, `LOCK_DIR`, `CLOSE_DIR`) on `dir`; None for any other step.
pub fn dir_step(
    code: u8,
    location: &CStr,
    dir: &mut SessionDir<'_>,
) -> Option<Result<(), DirFailure>> {
    let outcome = match code {
        step::OPEN_DIR => posix::open(location, posix::SESSION_DIR_FLAGS)
            .map(|fd| *dir = SessionDir::Owned(fd))
            .map_err(DirFailure::Os),
        step::LOCK_DIR => match dir.fd().and_then(posix::try_lock) {
            Ok(true) => Ok(()),
            Ok(false) => Err(DirFailure::Held),
            Err(errno) => Err(DirFailure::Os(errno)),
        },
        step::CLOSE_DIR => dir.close().map_err(DirFailure::Os),
        _ => return None,
    };
    Some(outcome)
}

/// One save: the names it acts on and the plan it executes.
pub struct Save<'a> {
    pub location: &'a CStr,
    pub next_name: &'a CStr,
    pub target: &'a CStr,
    pub codes: &'a [u8],
}

struct State<'d> {
    dir: SessionDir<'d>,
    next: Option<Fd>,
    created: bool,
}

impl Save<'_> {
    /// Execute the plan; on failure, the next file this save created is gone
    /// and every descriptor it opened is closed.
    pub fn run(&self, data: Checkpoint) -> Result<(), SaveError> {
        self.run_in(SessionDir::Closed, data)
    }

    /// Execute the plan in `dir`, a session directory the caller opened and
    /// locked (a slotted save going on with a rebuild, or a held session: the
    /// plan starts after the lock). A directory handed over is closed on
    /// failure too; a lent one (a held session's) stays open either way.
    pub fn run_in(&self, dir: SessionDir<'_>, data: Checkpoint) -> Result<(), SaveError> {
        let mut state = State {
            dir,
            next: None,
            created: false,
        };
        let outcome = self
            .codes
            .iter()
            .try_for_each(|&code| self.step(code, data, &mut state));
        match outcome {
            Ok(()) => {
                // A well-formed plan closed both; a plan that did not must not leak them.
                let _ = state.release(None);
                Ok(())
            }
            Err(failure) => Err(SaveError {
                failure,
                cleanup: state.release(Some(self.next_name)),
            }),
        }
    }

    fn step(&self, code: u8, data: Checkpoint, state: &mut State<'_>) -> Result<(), Failure> {
        let os = |at| move |errno| Failure::Os { errno, at };
        if let Some(outcome) = dir_step(code, self.location, &mut state.dir) {
            return outcome.map_err(|failure| match failure {
                DirFailure::Os(errno) => os(At::Location)(errno),
                DirFailure::Held => Failure::Held,
            });
        }
        match code {
            step::CREATE_NEXT => {
                let dir = state.dir.fd().map_err(os(At::Next))?;
                let next =
                    posix::openat(dir, self.next_name, NEXT_FLAGS, NEXT_MODE).map_err(|errno| {
                        if errno == libc::EEXIST {
                            Failure::Leftover
                        } else {
                            Failure::Os {
                                errno,
                                at: At::Next,
                            }
                        }
                    })?;
                state.next = Some(next);
                state.created = true;
            }
            step::WRITE_NEXT => write_all(next(state)?, data)?,
            step::FSYNC_NEXT => posix::fsync(next(state)?).map_err(os(At::Next))?,
            step::CLOSE_NEXT => {
                let fd = state.next.take().ok_or(libc::EBADF).map_err(os(At::Next))?;
                fd.close().map_err(os(At::Next))?;
            }
            step::RENAME_NEXT => {
                let dir = state.dir.fd().map_err(os(At::Rename))?;
                posix::renameat(dir, self.next_name, self.target).map_err(os(At::Rename))?;
                state.created = false;
            }
            step::FSYNC_DIR => state
                .dir
                .fd()
                .and_then(posix::fsync)
                .map_err(os(At::Location))?,
            other => return Err(Failure::UnknownStep(other)),
        }
        Ok(())
    }
}

/// The next file, open; EBADF when it is not, as a syscall on it says.
fn next<'s>(state: &'s State<'_>) -> Result<&'s Fd, Failure> {
    state.next.as_ref().ok_or(Failure::Os {
        errno: libc::EBADF,
        at: At::Next,
    })
}

impl State<'_> {
    /// Close what is open and, given the next file's name, unlink it if this
    /// save created it. The first error is kept; the rest of the undo still runs.
    fn release(&mut self, unlink: Option<&CStr>) -> Option<Cleanup> {
        let mut first = None;
        if let Some(next) = self.next.take() {
            if let Err(errno) = next.close() {
                first = Some(Cleanup::Close(errno));
            }
        }
        if let (true, Some(name)) = (self.created, unlink) {
            self.created = false;
            if let Err(errno) = self.dir.fd().and_then(|dir| posix::unlinkat(dir, name)) {
                first = first.or(Some(Cleanup::Unlink(errno)));
            }
        }
        if let Err(errno) = self.dir.close() {
            first = first.or(Some(Cleanup::Close(errno)));
        }
        first
    }
}

/// Write every byte of `data`, one `write` at least (as the fallback does, even
/// for no bytes), continuing after short writes.
fn write_all(fd: &Fd, data: Checkpoint) -> Result<(), Failure> {
    let os = |errno| Failure::Os {
        errno,
        at: At::Next,
    };
    let mut written = unsafe { posix::write(fd, data.ptr, data.len) }.map_err(os)?;
    while written < data.len {
        let step =
            unsafe { posix::write(fd, data.ptr.add(written), data.len - written) }.map_err(os)?;
        if step == 0 {
            return Err(Failure::NoProgress);
        }
        written += step;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    const DURABLE: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8, 9];
    const NOT_DURABLE: &[u8] = &[1, 2, 3, 4, 6, 7, 9];

    use crate::test_dir::TempDir;

    fn save(location: &Path, codes: &[u8], data: &[u8]) -> Result<(), SaveError> {
        let location = CString::new(location.as_os_str().as_bytes()).unwrap();
        Save {
            location: &location,
            next_name: c"session.next",
            target: c"session",
            codes,
        }
        .run(Checkpoint::of(data))
    }

    #[test]
    fn durable_save_replaces_the_checkpoint() {
        let dir = TempDir::new("save", "durable");
        save(&dir.0, DURABLE, b"first").unwrap();
        save(&dir.0, DURABLE, b"second").unwrap();
        assert_eq!(fs::read(dir.0.join("session")).unwrap(), b"second");
        assert_eq!(dir.entries(), ["session"]);
        let mode = fs::metadata(dir.0.join("session"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn save_without_flushes_writes_the_same_bytes() {
        let dir = TempDir::new("save", "none");
        let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        save(&dir.0, NOT_DURABLE, &data).unwrap();
        assert_eq!(fs::read(dir.0.join("session")).unwrap(), data);
    }

    #[test]
    fn empty_checkpoint_is_saved_as_an_empty_file() {
        let dir = TempDir::new("save", "empty");
        save(&dir.0, DURABLE, b"").unwrap();
        assert_eq!(fs::read(dir.0.join("session")).unwrap(), b"");
    }

    #[test]
    fn leftover_next_file_is_reported_and_kept() {
        let dir = TempDir::new("save", "leftover");
        save(&dir.0, DURABLE, b"old").unwrap();
        fs::write(dir.0.join("session.next"), b"partial").unwrap();
        let err = save(&dir.0, DURABLE, b"new").unwrap_err();
        assert_eq!(err.failure, Failure::Leftover);
        assert_eq!(err.cleanup, None);
        assert_eq!(fs::read(dir.0.join("session.next")).unwrap(), b"partial");
        assert_eq!(fs::read(dir.0.join("session")).unwrap(), b"old");
    }

    #[test]
    fn held_lock_is_reported_without_touching_anything() {
        let dir = TempDir::new("save", "held");
        let location = CString::new(dir.0.as_os_str().as_bytes()).unwrap();
        let holder = posix::open(&location, posix::DIR_FLAGS).unwrap();
        posix::flock(&holder, libc::LOCK_EX | libc::LOCK_NB).unwrap();
        let err = save(&dir.0, DURABLE, b"new").unwrap_err();
        holder.close().unwrap();
        assert_eq!(err.failure, Failure::Held);
        assert!(dir.entries().is_empty());
    }

    #[test]
    fn missing_directory_fails_at_the_location() {
        let dir = TempDir::new("save", "missing");
        let err = save(&dir.0.join("gone"), DURABLE, b"x").unwrap_err();
        assert_eq!(
            err.failure,
            Failure::Os {
                errno: libc::ENOENT,
                at: At::Location
            }
        );
    }

    #[test]
    fn failed_rename_unlinks_the_next_file() {
        let dir = TempDir::new("save", "rename");
        // A non-empty directory named like the target: rename(2) refuses it.
        fs::create_dir_all(dir.0.join("session").join("inside")).unwrap();
        let err = save(&dir.0, DURABLE, b"x").unwrap_err();
        assert!(matches!(
            err.failure,
            Failure::Os {
                at: At::Rename,
                errno
            } if errno == libc::EISDIR || errno == libc::ENOTEMPTY
        ));
        assert_eq!(err.cleanup, None);
        assert_eq!(dir.entries(), ["session"]);
    }

    #[test]
    fn unknown_step_undoes_what_came_before() {
        let dir = TempDir::new("save", "unknown");
        let err = save(&dir.0, &[1, 2, 3, 4, 42], b"x").unwrap_err();
        assert_eq!(err.failure, Failure::UnknownStep(42));
        assert!(dir.entries().is_empty());
    }

    #[test]
    fn a_write_to_a_closed_descriptor_is_an_error_at_next() {
        let dir = TempDir::new("save", "badwrite");
        // CLOSE_NEXT before WRITE_NEXT: the write sees EBADF.
        let err = save(&dir.0, &[1, 2, 3, 6, 4], b"x").unwrap_err();
        assert_eq!(
            err.failure,
            Failure::Os {
                errno: libc::EBADF,
                at: At::Next
            }
        );
        assert!(dir.entries().is_empty());
    }
}
