//! Listing a session repository: one pass over the directory, one `fstatat` per
//! session, sorted as `sessionstore._ordering.sort_key` sorts, with the GIL
//! released. `sessionstore._python_listing` is the fallback with the same answers.

use std::cmp::Ordering;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::sys::{self, Errno};

const SESSION_SUFFIX: &[u8] = b".session";
const TOMBSTONE_MARK: &[u8] = b".removing-";
const CHECKPOINT: &[u8] = b"session";
const NEXT: &[u8] = b"session.next";

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

/// What a scan adds: the checkpoint's size and a first look at `session.next`.
pub struct Detail {
    pub checkpoint_size: Option<u64>,
    /// inode and change time (ns) of `session.next`
    pub next: Option<(u64, i128)>,
}

pub struct Listing {
    pub sessions: Vec<(Found, Option<Detail>)>,
    pub tombstones: Vec<Vec<u8>>,
}

/// Where a listing failed: the repository itself, or a path inside it.
#[derive(Debug)]
pub enum ListError {
    Repository(Errno),
    Entry(Errno, Vec<u8>),
}

/// An open directory stream, closed (with its descriptor) on drop.
struct Dir(*mut libc::DIR);

impl Drop for Dir {
    fn drop(&mut self) {
        unsafe { libc::closedir(self.0) };
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
        sys::clear_errno();
        let entry = unsafe { libc::readdir(dir.0) };
        if entry.is_null() {
            return match sys::last_errno() {
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
fn look(fd: libc::c_int, path: &[u8]) -> Result<Option<libc::stat>, ListError> {
    match sys::stat_at(fd, &to_c(path)?) {
        Ok(st) => Ok(st),
        Err(libc::ENOTDIR) => Ok(None),
        Err(errno) => Err(ListError::Entry(errno, path.to_vec())),
    }
}

/// The checkpoint's size and `session.next`, or None when the session vanished.
///
/// The one place of this backend that knows which file holds a checkpoint (the
/// fallback's is `_python_listing._checkpoint_size`): the replace layout's
/// `session`, when it is a regular file (a directory or a symlink there holds
/// nothing a load returns). A slotted session (`session.slots` only) has no
/// size here: the repository's scan reads its newest record.
fn detail(fd: libc::c_int, name: &[u8]) -> Result<Option<Detail>, ListError> {
    let checkpoint = look(fd, &crate::join(name, CHECKPOINT))?;
    let checkpoint_size = checkpoint
        .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
        .map(|st| st.st_size as u64);
    let next = look(fd, &crate::join(name, NEXT))?
        .map(|st| (st.st_ino, time_ns(st.st_ctime, st.st_ctime_nsec)));
    if checkpoint_size.is_none() && next.is_none() && look(fd, name)?.is_none() {
        return Ok(None);
    }
    Ok(Some(Detail {
        checkpoint_size,
        next,
    }))
}

/// The sessions in the repository at `location`, youngest first (ties by name as
/// Python orders the names); None when the repository does not exist. With
/// `details`, each session's checkpoint size and `session.next`, and the names
/// of tombstones. An entry that vanishes meanwhile is left out.
pub fn list(location: &CStr, details: bool) -> Result<Option<Listing>, ListError> {
    let fd = match sys::open(location, sys::DIR_FLAGS) {
        Ok(fd) => fd,
        Err(libc::ENOENT) => return Ok(None),
        Err(errno) => return Err(ListError::Repository(errno)),
    };
    let stream = unsafe { libc::fdopendir(fd) };
    if stream.is_null() {
        let errno = sys::last_errno();
        let _ = sys::close(fd);
        return Err(ListError::Repository(errno));
    }
    let dir = Dir(stream);
    let mut candidates = Vec::new();
    let mut tombstones = Vec::new();
    for (name, d_type) in read_entries(&dir)? {
        if !may_be_dir(d_type) {
            continue;
        }
        if is_session_name(&name) {
            candidates.push(name);
        } else if details && is_tombstone_name(&name) {
            // As the fallback's DirEntry.is_dir(): d_type decides; only an
            // unknown one takes a stat.
            let dir =
                d_type == libc::DT_DIR || (d_type == libc::DT_UNKNOWN && is_dir(look(fd, &name)?));
            if dir {
                tombstones.push(name);
            }
        }
    }
    let looked = in_parallel(&candidates, |name| look(fd, name));
    let mut sessions = Vec::with_capacity(candidates.len());
    for (name, st) in candidates.into_iter().zip(looked) {
        if let Some(st) = st?.filter(|st| is_dir(Some(*st))) {
            let (mtime_ns, dev, ino) = (mtime_ns(&st), sys::dev_number(st.st_dev), st.st_ino);
            sessions.push(Found {
                name,
                mtime_ns,
                dev,
                ino,
            });
        }
    }
    sessions.sort_by(|a, b| {
        b.mtime_ns
            .cmp(&a.mtime_ns)
            .then_with(|| python_order(&a.name, &b.name))
    });
    let listed = if details {
        let details = in_parallel(&sessions, |found| detail(fd, &found.name));
        let mut listed = Vec::with_capacity(sessions.len());
        for (found, detail) in sessions.into_iter().zip(details) {
            if let Some(detail) = detail? {
                listed.push((found, Some(detail)));
            }
        }
        listed
    } else {
        sessions.into_iter().map(|found| (found, None)).collect()
    };
    Ok(Some(Listing {
        sessions: listed,
        tombstones,
    }))
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

fn list_error(py: Python<'_>, error: ListError, location: &[u8]) -> PyErr {
    match error {
        ListError::Repository(errno) => crate::errno_error(py, errno, location),
        ListError::Entry(errno, path) => {
            crate::errno_error(py, errno, &crate::join(location, &path))
        }
    }
}

fn run(py: Python<'_>, location: &Bound<'_, PyAny>, details: bool) -> PyResult<Option<Listing>> {
    let path = crate::FsPath::new(location)?;
    let c = path.as_c_str();
    py.detach(|| list(c, details))
        .map_err(|error| list_error(py, error, path.as_bytes()))
}

/// A session of a listing with the name Python sees.
type Named<'py, 'a> = (Bound<'py, PyString>, &'a Found, Option<&'a Detail>);

/// The sessions of `listing` with their decoded names, in `sort_key` order.
///
/// `list` orders ties by the names' UTF-8 decoding; under another file system
/// encoding only the interpreter's codec knows the `str` Python compares, so
/// the ties are ordered again by those strings' code points.
fn named<'py, 'a>(py: Python<'py>, listing: &'a Listing) -> PyResult<Vec<Named<'py, 'a>>> {
    let named = listing
        .sessions
        .iter()
        .map(|(found, detail)| Ok((crate::fs_name(py, &found.name)?, found, detail.as_ref())))
        .collect::<PyResult<Vec<Named<'py, 'a>>>>()?;
    if crate::fs_is_utf8(py) {
        return Ok(named);
    }
    // UTF-32-BE bytes compare as the code points do; surrogatepass keeps the
    // lone surrogates of undecodable bytes.
    let mut keyed = named
        .into_iter()
        .map(|entry| {
            let encoded = entry
                .0
                .call_method1("encode", ("utf-32-be", "surrogatepass"))?;
            Ok((encoded.cast_into::<PyBytes>()?.as_bytes().to_vec(), entry))
        })
        .collect::<PyResult<Vec<_>>>()?;
    keyed.sort_by(|(a_key, a), (b_key, b)| {
        b.1.mtime_ns
            .cmp(&a.1.mtime_ns)
            .then_with(|| a_key.cmp(b_key))
    });
    Ok(keyed.into_iter().map(|(_, entry)| entry).collect())
}

/// The decoded names of the tombstones in `listing`.
fn tombstones<'py>(py: Python<'py>, listing: &Listing) -> PyResult<Bound<'py, PyList>> {
    let names = listing
        .tombstones
        .iter()
        .map(|name| crate::fs_name(py, name))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, names)
}

/// The names of the sessions in `location`, youngest first; None when it is missing.
#[pyfunction]
pub fn list_sessions<'py>(
    py: Python<'py>,
    location: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyList>>> {
    let Some(listing) = run(py, location, false)? else {
        return Ok(None);
    };
    let names = named(py, &listing)?.into_iter().map(|(name, _, _)| name);
    PyList::new(py, names).map(Some)
}

/// The sessions in `location` with their stat data, youngest first, and the
/// tombstones' names; None when it is missing. Each session is a tuple
/// `(name, mtime_ns, st_dev, st_ino, checkpoint_size, next_ino, next_ctime_ns)`.
#[pyfunction]
pub fn scan_sessions<'py>(
    py: Python<'py>,
    location: &Bound<'py, PyAny>,
) -> PyResult<Option<(Bound<'py, PyList>, Bound<'py, PyList>)>> {
    let Some(listing) = run(py, location, true)? else {
        return Ok(None);
    };
    let mut sessions: Vec<Bound<'py, PyTuple>> = Vec::with_capacity(listing.sessions.len());
    for (name, found, detail) in named(py, &listing)? {
        let Some(detail) = detail else { continue };
        let (next_ino, next_ctime) = match detail.next {
            Some((ino, ctime)) => (Some(ino), Some(ctime)),
            None => (None, None),
        };
        let row = (
            name,
            found.mtime_ns,
            found.dev,
            found.ino,
            detail.checkpoint_size,
            next_ino,
            next_ctime,
        );
        sessions.push(row.into_pyobject(py)?);
    }
    Ok(Some((
        PyList::new(py, sessions)?,
        tombstones(py, &listing)?,
    )))
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
        assert_eq!(listing.tombstones, vec![b".b.session.removing-ab".to_vec()]);
        assert!(plain.tombstones.is_empty());
        let sizes: Vec<_> = listing
            .sessions
            .iter()
            .map(|(_, detail)| detail.as_ref().unwrap().checkpoint_size)
            .collect();
        assert_eq!(sizes, vec![Some(5), None, None]);
    }

    #[test]
    fn a_missing_repository_is_none_and_a_vanished_session_has_no_detail() {
        let (path, c) = repository("missing");
        let fd = sys::open(&c, sys::DIR_FLAGS).unwrap();
        let gone = detail(fd, b"gone.session");
        sys::close(fd).unwrap();
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
