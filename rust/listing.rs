//! Listing a session repository: one pass over the directory, one `fstatat` per
//! session, sorted as `sessionstore._ordering.sort_key` sorts, with the GIL
//! released. `sessionstore._fallback.listing` is the fallback with the same answers.

use std::cmp::Ordering;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use crate::posix::{self, Errno, Fd};
use crate::save_plan::{CHECKPOINT_NAME, NEXT_NAME, SLOTS_NAME};

const SESSION_SUFFIX: &[u8] = b".session";
const TOMBSTONE_MARK: &[u8] = b".removing-";
/// A FIFO opened with O_NONBLOCK for reading opens at once; the fstat after it
/// then tells it apart from a regular file before anything is read.
const PEEK_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC;

const OTHER: u8 = 0;
const FILE: u8 = 1;
const DIRECTORY: u8 = 2;

/// A directory entry a listing shows as a session (`_naming.is_session_name`).
pub fn is_session_name(name: &[u8]) -> bool {
    name.ends_with(SESSION_SUFFIX) && !name.starts_with(b".")
}

/// The leftover of an interrupted removal (`_naming.is_tombstone_name`).
pub fn is_tombstone_name(name: &[u8]) -> bool {
    name.starts_with(b".")
        && name
            .windows(TOMBSTONE_MARK.len())
            .any(|w| w == TOMBSTONE_MARK)
}

/// A name as Python's file-system decoding sees it: UTF-8, each undecodable
/// byte as the lone surrogate `U+DC00 + byte` (surrogateescape).
fn code_points(mut bytes: &[u8]) -> Vec<u32> {
    let mut points = Vec::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                points.extend(text.chars().map(u32::from));
                return points;
            }
            Err(error) => {
                let (valid, rest) = bytes.split_at(error.valid_up_to());
                let valid = std::str::from_utf8(valid).unwrap_or_default();
                points.extend(valid.chars().map(u32::from));
                let bad = error.error_len().unwrap_or(rest.len());
                points.extend(rest[..bad].iter().map(|&b| 0xDC00 + u32::from(b)));
                bytes = &rest[bad..];
            }
        }
    }
}

/// The order of two names as Python compares the `str` they decode to. For
/// UTF-8 that is byte order; only undecodable names need the slow way.
pub fn python_order(a: &[u8], b: &[u8]) -> Ordering {
    if std::str::from_utf8(a).is_ok() && std::str::from_utf8(b).is_ok() {
        return a.cmp(b);
    }
    code_points(a).cmp(&code_points(b))
}

/// A session directory: its name and what its own `lstat` says.
pub struct Found {
    pub name: Vec<u8>,
    /// Wider than i64, which ends in 2262: Python's `st_mtime_ns` has no end.
    pub mtime_ns: i128,
    pub dev: u64,
    pub ino: u64,
}

/// The file holding a session's checkpoint, as `_fallback.listing.ScannedCheckpoint`.
pub struct Checkpoint {
    pub name: &'static [u8],
    /// `st_mode` of its `lstat` (or of the open file), 0 when that failed
    pub mode: libc::mode_t,
    /// 0, or the error of looking at or reading it
    pub errno: Errno,
    /// the size of what a load returns as far as the headers tell
    pub size: Option<u64>,
    pub mtime_ns: Option<i128>,
}

/// What a scan adds: a first look at `session.next`, the session's entries
/// and its checkpoint file.
pub struct Detail {
    /// inode and change time (ns) of `session.next`
    pub next: Option<(u64, i128)>,
    /// 0, or the error of reading the session directory
    pub errno: Errno,
    /// name and `EntryKind` (0 other, 1 regular file, 2 directory)
    pub entries: Vec<(Vec<u8>, u8)>,
    pub checkpoint: Option<Checkpoint>,
}

pub struct Listing {
    pub sessions: Vec<(Found, Option<Detail>)>,
    pub tombstones: Vec<(Found, Option<Detail>)>,
}

/// Where a listing failed: the repository itself, or a path inside it.
#[derive(Debug)]
pub enum ListError {
    Repository(Errno),
    Entry(Errno, Vec<u8>),
}

/// An open directory stream, closed (with its descriptor) on drop.
struct Dir {
    stream: *mut libc::DIR,
    /// The stream's descriptor, for calls relative to the directory; the
    /// stream closes it.
    fd: std::mem::ManuallyDrop<Fd>,
}

impl Dir {
    /// The stream over the open directory `fd`; `fd` is closed on failure.
    fn open(fd: Fd) -> Result<Self, Errno> {
        let stream = unsafe { libc::fdopendir(fd.raw()) };
        if stream.is_null() {
            return Err(posix::last_errno());
        }
        Ok(Self {
            stream,
            fd: std::mem::ManuallyDrop::new(fd),
        })
    }

    fn fd(&self) -> &Fd {
        &self.fd
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        unsafe { libc::closedir(self.stream) };
    }
}

fn to_c(bytes: &[u8]) -> Result<CString, ListError> {
    CString::new(bytes).map_err(|_| ListError::Entry(libc::EINVAL, bytes.to_vec()))
}

/// A time in nanoseconds as Python's `st_*_ns` gives it, for any second count.
fn time_ns(seconds: impl Into<i128>, nanoseconds: impl Into<i128>) -> i128 {
    seconds.into() * 1_000_000_000 + nanoseconds.into()
}

fn mtime_ns(st: &libc::stat) -> i128 {
    time_ns(st.st_mtime, st.st_mtime_nsec)
}

/// The entries of the open directory `dir`: name and `d_type`.
fn read_entries(dir: &Dir) -> Result<Vec<(Vec<u8>, u8)>, ListError> {
    let mut entries = Vec::new();
    loop {
        // readdir says "end" and "error" both with NULL; only errno tells them apart.
        posix::clear_errno();
        let entry = unsafe { libc::readdir(dir.stream) };
        if entry.is_null() {
            return match posix::last_errno() {
                0 => Ok(entries),
                errno => Err(ListError::Repository(errno)),
            };
        }
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        entries.push((name.to_vec(), unsafe { (*entry).d_type }));
    }
}

/// Whether `d_type` may be a directory; DT_UNKNOWN (some file systems) needs a stat.
fn may_be_dir(d_type: u8) -> bool {
    d_type == libc::DT_DIR || d_type == libc::DT_UNKNOWN
}

/// `fstatat` of `path` relative to the repository; ENOTDIR (an entry replaced by a
/// file) reads as "not there", like ENOENT.
fn look(fd: &Fd, path: &[u8]) -> Result<Option<libc::stat>, ListError> {
    match posix::stat_at(fd, &to_c(path)?) {
        Ok(st) => Ok(st),
        Err(libc::ENOTDIR) => Ok(None),
        Err(errno) => Err(ListError::Entry(errno, path.to_vec())),
    }
}

fn is_regular(mode: libc::mode_t) -> bool {
    mode & libc::S_IFMT == libc::S_IFREG
}

/// The `EntryKind` of an entry of the open directory `fd`; DT_UNKNOWN takes a stat.
fn entry_kind(fd: &Fd, name: &[u8], d_type: u8) -> u8 {
    let mode = match d_type {
        libc::DT_DIR => return DIRECTORY,
        libc::DT_REG => return FILE,
        libc::DT_UNKNOWN => to_c(name)
            .ok()
            .and_then(|c| posix::stat_at(fd, &c).ok().flatten())
            .map_or(0, |st| st.st_mode & libc::S_IFMT),
        _ => return OTHER,
    };
    match mode {
        libc::S_IFDIR => DIRECTORY,
        libc::S_IFREG => FILE,
        _ => OTHER,
    }
}

/// `(st_mode, errno, size)` of `session.slots` from its headers alone: two small
/// reads whatever the checkpoint's size (`_fallback.listing._slots_size`).
fn slots_size(session: &Fd) -> (libc::mode_t, Errno, Option<u64>) {
    let fd = match posix::openat(session, SLOTS_NAME, PEEK_FLAGS, 0) {
        Ok(fd) => fd,
        Err(errno) => return (0, errno, None),
    };
    let found = match posix::fstat(&fd) {
        Err(errno) => (0, errno, None),
        Ok(st) if !is_regular(st.st_mode) => (st.st_mode, 0, None),
        Ok(st) => match crate::slotted::read_view(&fd) {
            Ok(view) => {
                let size = u64::try_from(st.st_size).unwrap_or(0);
                let length = newest_plausible_length(&view.header, &view.headers, size);
                (st.st_mode, 0, length)
            }
            Err(crate::slotted::ReadError::Corrupt(_)) => (st.st_mode, 0, None),
            Err(crate::slotted::ReadError::Os(errno)) => (0, errno, None),
        },
    };
    drop(fd);
    found
}

/// The checkpoint file of the open session directory `session` whose entries
/// are `names`: `session` where there is one (as a load decides), else
/// `session.slots`; one that vanished since makes way for the other.
///
/// The one place of this backend that knows which file holds a checkpoint (the
/// fallback's is `_fallback.listing._checkpoint`).
fn checkpoint(session: &Fd, names: &[&[u8]]) -> Option<Checkpoint> {
    for c in [CHECKPOINT_NAME, SLOTS_NAME] {
        let name = c.to_bytes();
        if !names.contains(&name) {
            continue;
        }
        let st = match posix::stat_at(session, c) {
            Ok(None) => continue,
            Ok(Some(st)) => st,
            Err(errno) => {
                return Some(Checkpoint {
                    name,
                    mode: 0,
                    errno,
                    size: None,
                    mtime_ns: None,
                })
            }
        };
        let mtime_ns = Some(mtime_ns(&st));
        let (mode, errno, size) = if !is_regular(st.st_mode) {
            (st.st_mode, 0, None)
        } else if c == CHECKPOINT_NAME {
            (st.st_mode, 0, u64::try_from(st.st_size).ok())
        } else {
            let (mode, errno, size) = slots_size(session);
            (if mode == 0 { st.st_mode } else { mode }, errno, size)
        };
        return Some(Checkpoint {
            name,
            mode,
            errno,
            size,
            mtime_ns,
        });
    }
    None
}

/// What a scan reports about one session (`_fallback.listing._scanned`); None
/// when it vanished. An error inside the session is that session's, reported
/// in the detail, never the listing's.
fn detail(fd: &Fd, name: &[u8]) -> Result<Option<Detail>, ListError> {
    let failed = |errno, entries| {
        Ok(Some(Detail {
            next: None,
            errno,
            entries,
            checkpoint: None,
        }))
    };
    let session = match posix::openat(fd, &to_c(name)?, posix::SESSION_DIR_FLAGS, 0) {
        Ok(session) => session,
        Err(libc::ENOENT | libc::ENOTDIR) => return Ok(None),
        Err(errno) => return failed(errno, Vec::new()),
    };
    let dir = match Dir::open(session) {
        Ok(dir) => dir,
        Err(errno) => return failed(errno, Vec::new()),
    };
    let session = dir.fd();
    let raw = match read_entries(&dir) {
        Ok(raw) => raw,
        Err(ListError::Repository(errno) | ListError::Entry(errno, _)) => {
            return failed(errno, Vec::new())
        }
    };
    let entries: Vec<(Vec<u8>, u8)> = raw
        .into_iter()
        .filter(|(entry, _)| entry != b"." && entry != b"..")
        .map(|(entry, d_type)| {
            let kind = entry_kind(session, &entry, d_type);
            (entry, kind)
        })
        .collect();
    let names: Vec<&[u8]> = entries.iter().map(|(entry, _)| entry.as_slice()).collect();
    let mut next = None;
    if names.contains(&NEXT_NAME.to_bytes()) {
        match posix::stat_at(session, NEXT_NAME) {
            Ok(st) => next = st.map(|st| (st.st_ino, time_ns(st.st_ctime, st.st_ctime_nsec))),
            Err(errno) => return failed(errno, entries),
        }
    }
    let checkpoint = checkpoint(session, &names);
    Ok(Some(Detail {
        next,
        errno: 0,
        entries,
        checkpoint,
    }))
}

/// The data length of the newest record whose header is whole and whose data
/// ends within a file of `file_size` bytes (`_slots_format.newest_plausible_length`).
fn newest_plausible_length(
    header: &crate::slots_format::FileHeader,
    headers: &crate::slots_format::Headers,
    file_size: u64,
) -> Option<u64> {
    crate::slots_format::newest_first(headers)
        .into_iter()
        .filter_map(|slot| headers[slot].map(|record| (slot, record)))
        .find(|(slot, record)| {
            header
                .slot_offset(*slot)
                .saturating_add(crate::slots_format::RECORD_HEADER_SIZE as u64)
                .saturating_add(record.length)
                <= file_size
        })
        .map(|(_, record)| record.length)
}

/// The sessions in the repository at `location`, youngest first (ties by name as
/// Python orders the names); None when the repository does not exist. With
/// `details`, each session's detail, and the tombstones with theirs. An entry
/// that vanishes meanwhile is left out.
pub fn list(location: &CStr, details: bool) -> Result<Option<Listing>, ListError> {
    let fd = match posix::open(location, posix::DIR_FLAGS) {
        Ok(fd) => fd,
        Err(libc::ENOENT) => return Ok(None),
        Err(errno) => return Err(ListError::Repository(errno)),
    };
    let dir = Dir::open(fd).map_err(ListError::Repository)?;
    let fd = dir.fd();
    let mut candidates = Vec::new();
    let mut graves = Vec::new();
    for (name, d_type) in read_entries(&dir)? {
        if !may_be_dir(d_type) {
            continue;
        }
        if is_session_name(&name) {
            candidates.push(name);
        } else if details && is_tombstone_name(&name) {
            graves.push(name);
        }
    }
    let mut sessions = found(fd, candidates)?;
    sessions.sort_by(|a, b| {
        b.mtime_ns
            .cmp(&a.mtime_ns)
            .then_with(|| python_order(&a.name, &b.name))
    });
    if !details {
        return Ok(Some(Listing {
            sessions: sessions.into_iter().map(|found| (found, None)).collect(),
            tombstones: Vec::new(),
        }));
    }
    Ok(Some(Listing {
        sessions: detailed(fd, sessions)?,
        tombstones: detailed(fd, found(fd, graves)?)?,
    }))
}

/// The directories among `names`, each with what its own `lstat` says, in order.
fn found(fd: &Fd, names: Vec<Vec<u8>>) -> Result<Vec<Found>, ListError> {
    let looked = in_parallel(&names, |name| look(fd, name));
    let mut found = Vec::with_capacity(names.len());
    for (name, st) in names.into_iter().zip(looked) {
        if let Some(st) = st?.filter(|st| is_dir(Some(*st))) {
            let (mtime_ns, dev, ino) = (mtime_ns(&st), posix::dev_number(st.st_dev), st.st_ino);
            found.push(Found {
                name,
                mtime_ns,
                dev,
                ino,
            });
        }
    }
    Ok(found)
}

/// `sessions` with the detail of each, those that vanished left out.
fn detailed(fd: &Fd, sessions: Vec<Found>) -> Result<Vec<(Found, Option<Detail>)>, ListError> {
    let details = in_parallel(&sessions, |found| detail(fd, &found.name));
    let mut listed = Vec::with_capacity(sessions.len());
    for (found, detail) in sessions.into_iter().zip(details) {
        if let Some(detail) = detail? {
            listed.push((found, Some(detail)));
        }
    }
    Ok(listed)
}

fn is_dir(st: Option<libc::stat>) -> bool {
    st.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// Below this many sessions one thread stats them faster than starting more.
const PARALLEL_FROM: usize = 512;
/// Each extra thread gets at least this many `fstatat` calls.
const PER_THREAD: usize = 256;
/// More threads than this only queue on the same directory's locks.
const MAX_THREADS: usize = 4;
/// The items a thread takes at a time: small enough that a thread the scheduler
/// leaves waiting holds back little, large enough that taking costs nothing.
const BLOCK: usize = 64;

/// `f` of every item, in order, on a few threads when there are many items.
///
/// The calls are independent `fstatat`s on one open directory, which the kernel
/// serves concurrently. Threads take blocks of items as they go rather than a
/// fixed share, so on a busy machine the calling thread does the work of a
/// helper that gets no CPU instead of waiting for it; a thread that cannot be
/// started just leaves its blocks to the others.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = if items.len() < PARALLEL_FROM {
        1
    } else {
        cores.min(MAX_THREADS).min(items.len() / PER_THREAD).max(1)
    };
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let blocks = items.len().div_ceil(BLOCK);
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let block = next.fetch_add(1, AtomicOrdering::Relaxed);
            if block >= blocks {
                return done;
            }
            let end = items.len().min((block + 1) * BLOCK);
            let part = &items[block * BLOCK..end];
            done.push((block, part.iter().map(&f).collect::<Vec<R>>()));
        }
    };
    let mut done = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, work).ok())
            .collect();
        let mut done = work();
        for helper in helpers {
            match helper.join() {
                Ok(part) => done.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        done
    });
    done.sort_unstable_by_key(|(block, _)| *block);
    done.into_iter().flat_map(|(_, part)| part).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn repository(name: &str) -> (std::path::PathBuf, CString) {
        let path = std::env::temp_dir().join(format!(
            "sessionstore-listing-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        (path, c)
    }

    fn names(listing: &Listing) -> Vec<&[u8]> {
        listing
            .sessions
            .iter()
            .map(|(found, _)| found.name.as_slice())
            .collect()
    }

    #[test]
    fn lists_session_directories_youngest_first_and_nothing_else() {
        let (path, c) = repository("list");
        for (name, age) in [
            ("old.session", 30),
            ("young.session", 10),
            ("b.session", 20),
        ] {
            std::fs::create_dir(path.join(name)).unwrap();
            let time = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
            std::fs::File::open(path.join(name))
                .unwrap()
                .set_modified(time)
                .unwrap();
        }
        std::fs::write(path.join("young.session/session"), b"12345").unwrap();
        std::fs::write(path.join("file.session"), b"").unwrap();
        std::fs::create_dir(path.join(".hidden.session")).unwrap();
        std::fs::create_dir(path.join(".b.session.removing-ab")).unwrap();
        std::fs::write(path.join(".c.session.removing-cd"), b"").unwrap();
        std::os::unix::fs::symlink(path.join("old.session"), path.join("link.session")).unwrap();
        std::os::unix::fs::symlink(
            path.join(".b.session.removing-ab"),
            path.join(".d.session.removing-ef"),
        )
        .unwrap();
        let listing = list(&c, true).unwrap().unwrap();
        let plain = list(&c, false).unwrap().unwrap();
        std::fs::remove_dir_all(&path).unwrap();
        let expected: Vec<&[u8]> = vec![b"young.session", b"b.session", b"old.session"];
        assert_eq!(names(&listing), expected);
        assert_eq!(names(&plain), expected);
        let graves: Vec<&[u8]> = listing
            .tombstones
            .iter()
            .map(|(found, _)| found.name.as_slice())
            .collect();
        assert_eq!(graves, vec![b".b.session.removing-ab".as_slice()]);
        assert!(plain.tombstones.is_empty());
        let sizes: Vec<_> = listing
            .sessions
            .iter()
            .map(|(_, detail)| {
                let checkpoint = detail.as_ref().unwrap().checkpoint.as_ref();
                checkpoint.and_then(|c| c.size)
            })
            .collect();
        assert_eq!(sizes, vec![Some(5), None, None]);
    }

    #[test]
    fn a_missing_repository_is_none_and_a_vanished_session_has_no_detail() {
        let (path, c) = repository("missing");
        let fd = posix::open(&c, posix::DIR_FLAGS).unwrap();
        let gone = detail(&fd, b"gone.session");
        fd.close().unwrap();
        std::fs::remove_dir_all(&path).unwrap();
        assert!(matches!(gone, Ok(None)));
        assert!(matches!(list(&c, false), Ok(None)));
    }

    #[test]
    fn many_sessions_are_listed_alike_on_one_thread_and_several() {
        let items: Vec<usize> = (0..PARALLEL_FROM * 3).collect();
        let doubled = in_parallel(&items, |i| i * 2);
        assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_is_sized_only_when_its_data_lies_within_the_file() {
        use crate::slots_format::{decode_record_header, encode_record_header, FileHeader};
        let header = FileHeader { slot_size: 8192 };
        let record = |sequence, length: usize| {
            decode_record_header(&encode_record_header(sequence, &vec![0; length]), 8192)
        };
        let headers = [record(1, 100), record(2, 5000)];
        let newest_end = header.slot_offset(1) + 32 + 5000;
        assert_eq!(
            newest_plausible_length(&header, &headers, newest_end),
            Some(5000)
        );
        // The newest claims past the end: the older one is what lies within.
        assert_eq!(
            newest_plausible_length(&header, &headers, newest_end - 1),
            Some(100)
        );
        assert_eq!(newest_plausible_length(&header, &headers, 4096 + 32), None);
        assert_eq!(
            newest_plausible_length(&header, &[None, None], u64::MAX),
            None
        );
    }

    #[test]
    fn names_are_classified_as_naming_does() {
        assert!(is_session_name(b"pbox-x.session"));
        assert!(!is_session_name(b".pbox-x.session"));
        assert!(!is_session_name(b"pbox-x.session.next"));
        assert!(is_tombstone_name(b".pbox-x.session.removing-ab12"));
        assert!(!is_tombstone_name(b"pbox-x.session.removing-ab12"));
    }

    #[test]
    fn utf8_names_compare_by_bytes_and_code_points_alike() {
        assert_eq!(python_order("é".as_bytes(), b"z"), Ordering::Greater);
        assert_eq!(python_order(b"a", b"b"), Ordering::Less);
    }

    #[test]
    fn undecodable_bytes_compare_as_their_surrogates() {
        // U+DC80 (from the byte 0x80) sorts after U+00E9 but before U+E000.
        assert_eq!(python_order(b"\x80", "é".as_bytes()), Ordering::Greater);
        assert_eq!(python_order(b"\x80", "\u{e000}".as_bytes()), Ordering::Less);
        assert_eq!(code_points(b"a\xc3b"), vec![0x61, 0xDCC3, 0x62]);
    }
}
