//! The lock of a session: probing it without taking it, and breaking a stale one.
//!
//! The same algorithm as `sessionstore._fallback.lock` (and the same parser as
//! `sessionstore._lock_state.parse_proc_locks`): the kernel's lock table says
//! whether a live process holds the directory's flock, so looking never makes a
//! writer's `flock` fail; only where the table cannot answer is the lock tried.

use std::collections::HashSet;
use std::ffi::CStr;

use crate::posix::{self, Errno, Fd};
use crate::save_plan::NEXT_NAME;

const PROC_LOCKS: &str = "/proc/locks";
const PROC_PID_NAMESPACE: &CStr = c"/proc/self/ns/pid";
/// The inode number the kernel gives the initial PID namespace (PROC_PID_INIT_INO).
const INITIAL_PID_NAMESPACE_INODE: u64 = 0xEFFF_FFFC;

/// Whether `/proc/locks` read from here shows every holder: it leaves out the
/// locks of processes outside the reader's PID namespace, so only from the
/// initial one does a lock it does not show mean a lock nobody holds.
fn sees_every_lock() -> bool {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    if unsafe { libc::stat(PROC_PID_NAMESPACE.as_ptr(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    unsafe { st.assume_init() }.st_ino == INITIAL_PID_NAMESPACE_INODE
}

/// The lock of one session, numbered as `_native.pyi` documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    Unlocked = 0,
    Held = 1,
    Stale = 2,
}

/// A file as the lock table names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub major: u64,
    pub minor: u64,
    pub inode: u64,
}

/// The files holding a `FLOCK` lock in the text of `/proc/locks`.
///
/// Blocked waiters (`1: -> FLOCK ...`) hold nothing; a line that does not parse
/// is left out rather than guessed at.
pub fn parse_proc_locks(text: &str) -> HashSet<FileKey> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 6 || fields[1] != "FLOCK" {
                return None;
            }
            let mut parts = fields[5].split(':');
            let (major, minor, inode) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            Some(FileKey {
                major: parse_int(major, 16)?,
                minor: parse_int(minor, 16)?,
                inode: parse_int(inode, 10)?,
            })
        })
        .collect()
}

fn parse_int(text: &str, radix: u32) -> Option<u64> {
    u64::from_str_radix(text, radix).ok()
}

/// Whether a live process holds the flock of the open directory `dir`.
///
/// The lock table answers where it settles the question, so looking never
/// makes the flock of a writer starting at that moment fail. The lock is tried
/// where the table cannot tell (missing, or naming the inode under another
/// device number, as btrfs subvolumes do) and where it says "free" while the
/// next file is there: that answer means STALE, an invitation to break the
/// lock, and a table longer than a page is read in pieces taken at different
/// moments, which can miss a holder. Trying cannot miss one. And it is tried
/// wherever the table cannot show every holder (read from another PID
/// namespace than the initial one): a busy lock is then HELD, never UNLOCKED.
fn held(dir: &Fd, next_exists: bool) -> Result<bool, Errno> {
    let st = posix::fstat(dir)?;
    // Device numbers are unsigned on Linux and `int` on the BSDs; never negative.
    let key = FileKey {
        major: libc::major(st.st_dev) as u64,
        minor: libc::minor(st.st_dev) as u64,
        inode: st.st_ino,
    };
    if let Ok(table) = std::fs::read(PROC_LOCKS) {
        let keys = parse_proc_locks(&String::from_utf8_lossy(&table));
        if keys.contains(&key) {
            return Ok(true);
        }
        if !next_exists && !keys.iter().any(|k| k.inode == key.inode) && sees_every_lock() {
            return Ok(false);
        }
    }
    if !posix::try_lock(dir)? {
        return Ok(true);
    }
    posix::flock(dir, libc::LOCK_UN)?;
    Ok(false)
}

/// One look at the next file: a writer that creates, writes or renames it
/// changes its inode or its change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextFile {
    pub inode: u64,
    pub ctime_ns: i128,
}

fn look_at_next(dir: &Fd) -> Result<Option<NextFile>, Errno> {
    Ok(posix::stat_at(dir, NEXT_NAME)?.map(|st| NextFile {
        inode: st.st_ino,
        ctime_ns: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
    }))
}

/// The state from what a probe saw: the next file, the lock, the next file.
///
/// A live writer touches the next file only while it holds the lock, so the
/// file is a leftover only when the same, unchanged file was there on both
/// sides of a look at the lock that found no holder; any change in between
/// means a writer was inside a save.
pub fn classify(held: bool, before: Option<NextFile>, after: Option<NextFile>) -> LockState {
    if held || before != after {
        LockState::Held
    } else if after.is_none() {
        LockState::Unlocked
    } else {
        LockState::Stale
    }
}

/// The lock of the session at `location`. Every error concerns the location.
pub fn lock_state(location: &CStr) -> Result<LockState, Errno> {
    let dir = posix::open(location, posix::SESSION_DIR_FLAGS)?;
    let state = (|| -> Result<LockState, Errno> {
        let before = look_at_next(&dir)?;
        let held = held(&dir, before.is_some())?;
        let after = if held { before } else { look_at_next(&dir)? };
        Ok(classify(held, before, after))
    })();
    let closed = dir.close();
    let state = state?;
    closed?;
    Ok(state)
}

/// Where a `break_stale_lock` error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakError {
    /// opening or locking the session directory
    Location(Errno),
    /// unlinking its next file
    Next(Errno),
}

/// Remove a leftover next file while holding the directory's flock; false when
/// a live writer holds it or there is nothing to remove.
pub fn break_stale_lock(location: &CStr) -> Result<bool, BreakError> {
    let dir = posix::open(location, posix::SESSION_DIR_FLAGS).map_err(BreakError::Location)?;
    let outcome = match posix::try_lock(&dir) {
        Ok(false) => Ok(false),
        Err(errno) => Err(BreakError::Location(errno)),
        // Looked up first: a read-only filesystem refuses an unlink with EROFS
        // before it looks the name up; nothing to break is no error.
        Ok(true) => match look_at_next(&dir) {
            Ok(None) => Ok(false),
            Err(errno) => Err(BreakError::Next(errno)),
            Ok(Some(_)) => match posix::unlinkat(&dir, NEXT_NAME) {
                Ok(()) => Ok(true),
                Err(libc::ENOENT) => Ok(false),
                Err(errno) => Err(BreakError::Next(errno)),
            },
        },
    };
    // Closing releases the lock; its error matters only if nothing failed before.
    let closed = dir.close().map_err(BreakError::Location);
    let outcome = outcome?;
    closed?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    struct Session(PathBuf, CString);

    impl Session {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("sessionstore-lock-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            let c = CString::new(path.as_os_str().as_bytes()).unwrap();
            Self(path, c)
        }

        fn hold(&self) -> Fd {
            let fd = posix::open(&self.1, posix::DIR_FLAGS).unwrap();
            posix::flock(&fd, libc::LOCK_EX | libc::LOCK_NB).unwrap();
            fd
        }
    }

    impl Drop for Session {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn parses_holders_and_skips_waiters_and_noise() {
        let text = "1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 99 fd:00:1 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 12 08:01:77 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 5 zz:00:7 0 EOF\n\
                    garbage\n\
                    4: FLOCK  ADVISORY  READ 6 00:2a:42 0 EOF\n";
        let keys = parse_proc_locks(text);
        let expected: HashSet<FileKey> = [
            FileKey {
                major: 0xfd,
                minor: 0,
                inode: 5678,
            },
            FileKey {
                major: 0,
                minor: 0x2a,
                inode: 42,
            },
        ]
        .into_iter()
        .collect();
        assert_eq!(keys, expected);
    }

    #[test]
    fn classify_calls_a_changed_next_file_held() {
        let file = NextFile {
            inode: 7,
            ctime_ns: 1,
        };
        let touched = NextFile {
            inode: 7,
            ctime_ns: 2,
        };
        assert_eq!(classify(true, None, None), LockState::Held);
        assert_eq!(classify(false, None, None), LockState::Unlocked);
        assert_eq!(classify(false, Some(file), Some(file)), LockState::Stale);
        assert_eq!(classify(false, Some(file), Some(touched)), LockState::Held);
        assert_eq!(classify(false, None, Some(file)), LockState::Held);
        assert_eq!(classify(false, Some(file), None), LockState::Held);
    }

    #[test]
    fn a_fresh_session_is_unlocked() {
        let s = Session::new("fresh");
        assert_eq!(lock_state(&s.1), Ok(LockState::Unlocked));
    }

    #[test]
    fn a_held_flock_is_held_and_stays_held() {
        let s = Session::new("held");
        let fd = s.hold();
        assert_eq!(lock_state(&s.1), Ok(LockState::Held));
        // The probe must not have taken or dropped the holder's lock.
        let other = posix::open(&s.1, posix::DIR_FLAGS).unwrap();
        let busy = posix::flock(&other, libc::LOCK_EX | libc::LOCK_NB);
        other.close().unwrap();
        fd.close().unwrap();
        assert!(matches!(busy, Err(e) if posix::is_busy(e)));
    }

    #[test]
    fn a_leftover_without_a_holder_is_stale_and_breaks() {
        let s = Session::new("stale");
        fs::write(s.0.join("session.next"), b"x").unwrap();
        assert_eq!(lock_state(&s.1), Ok(LockState::Stale));
        assert_eq!(break_stale_lock(&s.1), Ok(true));
        assert!(!s.0.join("session.next").exists());
        assert_eq!(break_stale_lock(&s.1), Ok(false));
    }

    #[test]
    fn a_live_writer_is_never_broken() {
        let s = Session::new("live");
        fs::write(s.0.join("session.next"), b"x").unwrap();
        let fd = s.hold();
        let outcome = break_stale_lock(&s.1);
        fd.close().unwrap();
        assert_eq!(outcome, Ok(false));
        assert!(s.0.join("session.next").exists());
    }

    #[test]
    fn a_missing_session_is_enoent() {
        let s = Session::new("missing");
        let gone = CString::new(s.0.join("gone").as_os_str().as_bytes()).unwrap();
        assert_eq!(lock_state(&gone), Err(libc::ENOENT));
        assert_eq!(
            break_stale_lock(&gone),
            Err(BreakError::Location(libc::ENOENT))
        );
    }
}
