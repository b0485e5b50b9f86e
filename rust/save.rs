//! The step runner: a plan's codes executed in Rust, and the replace sequence.
//!
//! One runner executes every plan (replace, slotted, held) over one `State`:
//! each step code has one arm in `step`, its body here or in `slotted`, and
//! fails with the place it acts at (`At`), from which the extension's glue
//! spells the path its error names. The same plans,
//! the same syscalls as the fallback's `save` module. Plain Rust, without
//! Python, so the extension runs all of it with the GIL released and
//! `cargo test` can run it at all.
//!
//! The descriptors belong to the state and to whoever made it: a one-shot save
//! closes what is left open when it ends, success or failure; a held session
//! keeps them from its acquire to its release. A failed run undoes only what it
//! did to the next file (closes it, and unlinks it when it created it), so a
//! failed save never leaves a lock behind and never touches the previous
//! checkpoint.

use std::ffi::CStr;

use crate::posix::{self, Errno, Fd};
use crate::save_plan::{step, STEPS};
use crate::slots_format::{FormatError, RecordHeader, SlotChoice};
use crate::slotted::{self, View};

const NEXT_FLAGS: libc::c_int = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
const NEXT_MODE: libc::mode_t = 0o600;

/// Bytes the writer reads while the GIL is released.
///
/// A raw view rather than a slice: the memory belongs to a Python object that
/// another thread may mutate (a `bytearray`), so it is handed to `write(2)` and
/// `pwritev(2)`, and read by Rust code only through `as_slice` (a checksum).
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

/// What a step acts on: the path its errors name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// the session directory
    Location,
    /// `location/next_name`
    Next,
    /// the rename, from `location/next_name` to `location/target`: both paths
    Rename,
    /// `location/session`, the replace layout's checkpoint
    Checkpoint,
    /// `location/session.slots`
    Slots,
}

/// Why a step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A syscall failed with `errno`.
    Os { errno: Errno, at: At },
    /// A write accepted nothing although bytes were left (EIO, as the fallback says).
    NoProgress { at: At },
    /// `flock` found a live writer holding the lock.
    Held,
    /// The next file exists: the leftover of a writer that died.
    Leftover,
    /// `session` exists: the session is in the replace layout.
    ReplaceLayout,
    /// The slots file is not one this version reads.
    Corrupt(FormatError),
    /// The file is fine but no save can go on (sequence numbers exhausted).
    Format(FormatError),
    /// The plan holds a code that is not one of its steps.
    UnknownStep(u8),
    /// `WRITE_SLOT` came before `READ_SLOTS` chose the slot.
    NotChosen,
    /// `fdatasync` of the written record failed (`errno`); the record was then
    /// hidden, or hiding it failed too (`hide`, secondary to the failure).
    Unsynced { errno: Errno, hide: Option<Errno> },
    /// The memory for the previous record or the rebuilt file cannot be had.
    NoMemory,
}

impl Failure {
    /// The failure of a syscall acting at `at`, from its errno.
    pub fn os(at: At) -> impl Fn(Errno) -> Self + Copy {
        move |errno| Self::Os { errno, at }
    }
}

/// What went wrong undoing a failed save (secondary to the failure itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    Close(Errno),
    Unlink(Errno),
}

/// The step codes a plan may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steps {
    /// The replace sequence's, `OPEN_DIR` to `CLOSE_DIR`.
    Replace,
    /// Every step: the replace sequence's and the slotted layout's.
    Slotted,
}

/// The replace sequence's steps.
const REPLACE_STEPS: [u8; 9] = [
    step::OPEN_DIR,
    step::LOCK_DIR,
    step::CREATE_NEXT,
    step::WRITE_NEXT,
    step::FSYNC_NEXT,
    step::CLOSE_NEXT,
    step::RENAME_NEXT,
    step::FSYNC_DIR,
    step::CLOSE_DIR,
];

impl Steps {
    fn has(self, code: u8) -> bool {
        match self {
            Self::Replace => REPLACE_STEPS.contains(&code),
            Self::Slotted => STEPS.iter().any(|&(_, known)| known == code),
        }
    }
}

/// Which codes of a save were running when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The codes the save was given (a slotted save's in-place ones).
    Given,
    /// A slotted save's rebuild of the whole file.
    Rebuild,
}

/// A failed save: the failure; the steps its codes were run with (which say
/// how an unknown code is reported) and which of its codes those were; and
/// whatever failed while undoing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveError {
    pub failure: Failure,
    pub steps: Steps,
    pub part: Part,
    pub cleanup: Option<Cleanup>,
}

/// The names a run acts on.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    pub location: &'a CStr,
    pub next_name: &'a CStr,
    pub target: &'a CStr,
}

/// What a run of steps has open and knows: one save's, or a held session's
/// across saves (`known` says `view` is what is on disk: true after a held
/// session's own successful save, as nobody else writes while it holds the
/// lock).
#[derive(Debug, Default)]
pub struct State {
    pub(crate) dir: Option<Fd>,
    next: Option<Fd>,
    /// Whether this run created the next file and has not renamed it yet.
    created: bool,
    pub(crate) slots: Option<Fd>,
    pub(crate) view: Option<View>,
    pub(crate) choice: Option<SlotChoice>,
    pub(crate) previous: Option<(u64, Vec<u8>)>,
    /// The record header the save wrote, once written.
    pub(crate) written: Option<RecordHeader>,
    pub(crate) known: bool,
}

impl State {
    /// The open session directory; EBADF at `at` when it is not, as a syscall
    /// on it says.
    pub(crate) fn dir(&self, at: At) -> Result<&Fd, Failure> {
        self.dir.as_ref().ok_or(Failure::Os {
            errno: libc::EBADF,
            at,
        })
    }

    /// Close what is still open: the next file, the slots file, then the
    /// directory (which releases the lock). Every close runs; the first error
    /// is kept.
    pub fn close(&mut self) -> Result<(), Errno> {
        let mut first = Ok(());
        for fd in [self.next.take(), self.slots.take(), self.dir.take()]
            .into_iter()
            .flatten()
        {
            first = first.and(fd.close());
        }
        first
    }

    /// Close the next file a failed run left open, and unlink it when the run
    /// created it. The first error is kept; the rest of the undo still runs.
    fn undo(&mut self, next_name: &CStr) -> Option<Cleanup> {
        let mut first = None;
        if let Some(next) = self.next.take() {
            if let Err(errno) = next.close() {
                first = Some(Cleanup::Close(errno));
            }
        }
        if std::mem::take(&mut self.created) {
            let dir = self.dir.as_ref().ok_or(libc::EBADF);
            if let Err(errno) = dir.and_then(|dir| posix::unlinkat(dir, next_name)) {
                first = first.or(Some(Cleanup::Unlink(errno)));
            }
        }
        first
    }
}

/// Execute `codes` on `state`, each of `steps`: true when every step ran,
/// false when one ended the plan early (a slotted save going on with a
/// rebuild). A failure undoes what the run did to the next file.
pub fn run(
    names: &Names<'_>,
    state: &mut State,
    codes: &[u8],
    steps: Steps,
    data: Checkpoint,
) -> Result<bool, SaveError> {
    for &code in codes {
        match step(names, state, code, steps, data) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(failure) => {
                return Err(SaveError {
                    failure,
                    steps,
                    part: Part::Given,
                    cleanup: state.undo(names.next_name),
                })
            }
        }
    }
    Ok(true)
}

/// Run `save` on a state of its own, then close what it left open: a
/// well-formed plan closed everything, and one that did not must not leak. A
/// close that fails after a failed save is kept as the save's cleanup error.
pub fn one_shot(save: impl FnOnce(&mut State) -> Result<(), SaveError>) -> Result<(), SaveError> {
    let mut state = State::default();
    let outcome = save(&mut state);
    let closed = state.close();
    outcome.map_err(|mut error| {
        if let Err(errno) = closed {
            error.cleanup = error.cleanup.or(Some(Cleanup::Close(errno)));
        }
        error
    })
}

/// Execute a replace plan (`codes`) in `names.location`; on failure the next
/// file this save created is gone and every descriptor it opened is closed.
pub fn save(names: &Names<'_>, codes: &[u8], data: Checkpoint) -> Result<(), SaveError> {
    one_shot(|state| run(names, state, codes, Steps::Replace, data).map(drop))
}

/// One step's syscalls: false ends the plan early, true goes on.
fn step(
    names: &Names<'_>,
    state: &mut State,
    code: u8,
    steps: Steps,
    data: Checkpoint,
) -> Result<bool, Failure> {
    let os = Failure::os;
    if !steps.has(code) {
        return Err(Failure::UnknownStep(code));
    }
    match code {
        step::OPEN_DIR => {
            let dir = posix::open(names.location, posix::SESSION_DIR_FLAGS);
            state.dir = Some(dir.map_err(os(At::Location))?);
        }
        step::LOCK_DIR => {
            let dir = state.dir(At::Location)?;
            if !posix::try_lock(dir).map_err(os(At::Location))? {
                return Err(Failure::Held);
            }
        }
        step::CREATE_NEXT => {
            let dir = state.dir(At::Next)?;
            let next =
                posix::openat(dir, names.next_name, NEXT_FLAGS, NEXT_MODE).map_err(|errno| {
                    match errno {
                        libc::EEXIST => Failure::Leftover,
                        errno => os(At::Next)(errno),
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
            let dir = state.dir(At::Rename)?;
            posix::renameat(dir, names.next_name, names.target).map_err(os(At::Rename))?;
            state.created = false;
        }
        step::FSYNC_DIR => posix::fsync(state.dir(At::Location)?).map_err(os(At::Location))?,
        step::CLOSE_DIR => {
            if let Some(dir) = state.dir.take() {
                dir.close().map_err(os(At::Location))?;
            }
        }
        step::CHECK_NEXT => slotted::check_next(state)?,
        step::CHECK_REPLACE => slotted::check_replace(state)?,
        step::OPEN_SLOTS => return slotted::open_slots(state),
        step::READ_SLOTS => return slotted::read_slots(state, data),
        step::WRITE_SLOT => slotted::write_slot(state, data)?,
        step::SYNC_SLOT => slotted::sync_slot(state)?,
        step::CLOSE_SLOTS => slotted::close_slots(state)?,
        step::CHECK_DIR_LINKED => slotted::check_dir_linked(state)?,
        other => return Err(Failure::UnknownStep(other)),
    }
    Ok(true)
}

/// The next file, open; EBADF when it is not, as a syscall on it says.
fn next(state: &State) -> Result<&Fd, Failure> {
    state.next.as_ref().ok_or(Failure::Os {
        errno: libc::EBADF,
        at: At::Next,
    })
}

/// Write every byte of `data`, one `write` at least (as the fallback does, even
/// for no bytes), continuing after short writes.
fn write_all(fd: &Fd, data: Checkpoint) -> Result<(), Failure> {
    let os = Failure::os(At::Next);
    let mut written = unsafe { posix::write(fd, data.ptr, data.len) }.map_err(os)?;
    while written < data.len {
        let step =
            unsafe { posix::write(fd, data.ptr.add(written), data.len - written) }.map_err(os)?;
        if step == 0 {
            return Err(Failure::NoProgress { at: At::Next });
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
        let names = Names {
            location: &location,
            next_name: c"session.next",
            target: c"session",
        };
        super::save(&names, codes, Checkpoint::of(data))
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
    fn a_replace_plan_refuses_the_slotted_layout_s_steps() {
        let dir = TempDir::new("save", "slotted-step");
        let err = save(&dir.0, &[1, 2, step::OPEN_SLOTS], b"x").unwrap_err();
        assert_eq!(err.failure, Failure::UnknownStep(step::OPEN_SLOTS));
        assert_eq!((err.steps, err.part), (Steps::Replace, Part::Given));
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
