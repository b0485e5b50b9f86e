//! The few syscalls the writer issues, as small safe functions returning `errno`,
//! and `Fd`, an open descriptor that closes itself.
//!
//! Each function is one syscall (retried on EINTR where Python's `os` module
//! retries it too), so the traces of both backends stay comparable call by call.

use std::ffi::{CStr, CString};

/// An `errno` value, as the kernel returned it.
pub type Errno = i32;

/// The calling thread's `errno`, as the last failed call left it.
pub fn last_errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Set the calling thread's `errno` to 0, for the calls (`readdir`) that
/// report an error only through it. Each C library names its `errno` cell
/// differently.
pub fn clear_errno() {
    #[cfg(any(
        target_os = "linux",
        target_os = "emscripten",
        target_os = "fuchsia",
        target_os = "redox",
        target_os = "hurd",
        target_os = "dragonfly",
    ))]
    let cell = unsafe { libc::__errno_location() };
    #[cfg(any(target_vendor = "apple", target_os = "freebsd"))]
    let cell = unsafe { libc::__error() };
    #[cfg(any(
        target_os = "android",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "cygwin",
    ))]
    let cell = unsafe { libc::__errno() };
    #[cfg(any(target_os = "solaris", target_os = "illumos"))]
    let cell = unsafe { libc::___errno() };
    unsafe { *cell = 0 };
}

/// An open file descriptor, owned: dropped, it is closed and an error of that
/// `close` is lost. Where the error matters (a file's data, a lock's release),
/// `close` says it.
#[derive(Debug)]
pub struct Fd(libc::c_int);

impl Fd {
    /// Own `fd`.
    ///
    /// # Safety
    /// `fd` must be an open descriptor nothing else closes.
    pub unsafe fn from_raw(fd: libc::c_int) -> Self {
        Self(fd)
    }

    /// The descriptor's number, for a syscall.
    pub fn raw(&self) -> libc::c_int {
        self.0
    }

    /// Give up ownership: the caller closes the descriptor now.
    pub fn into_raw(self) -> libc::c_int {
        std::mem::ManuallyDrop::new(self).0
    }

    /// `close(fd)`, checked and never retried: on Linux the descriptor is gone
    /// even when close reports an error, so a retry could close someone else's.
    pub fn close(self) -> Result<(), Errno> {
        if unsafe { libc::close(self.into_raw()) } == 0 {
            Ok(())
        } else {
            Err(last_errno())
        }
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

/// Calls `f` until it stops failing with EINTR; `Err(errno)` for any other failure.
fn retrying(mut f: impl FnMut() -> libc::c_int) -> Result<libc::c_int, Errno> {
    loop {
        let ret = f();
        if ret >= 0 {
            return Ok(ret);
        }
        let errno = last_errno();
        if errno != libc::EINTR {
            return Err(errno);
        }
    }
}

/// The flags of an open directory: read-only, a directory, not inherited.
pub const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;

/// The flags of an open session directory: a symlinked session is refused (ENOTDIR:
/// the link itself is no directory), so nothing is saved or unlocked through one.
pub const SESSION_DIR_FLAGS: libc::c_int = DIR_FLAGS | libc::O_NOFOLLOW;

/// The flags of a checkpoint file opened for reading: a symlink is refused (ELOOP),
/// and the open does not wait (a FIFO's would wait for a writer).
pub const READ_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK;

/// What `open_regular` refuses a FIFO, a device or a socket with.
pub const NOT_REGULAR: Errno = libc::EINVAL;

/// `path` opened with `READ_FLAGS`, and its size, when it is a regular file: a
/// FIFO, a device or a socket would block a read or never end, so each is
/// refused with `NOT_REGULAR` (a directory with EISDIR) before anything is read.
/// Nothing is left open on failure (the descriptor is dropped).
pub fn open_regular(path: &CStr) -> Result<(Fd, u64), Errno> {
    let fd = open(path, READ_FLAGS)?;
    let st = fstat(&fd)?;
    let size = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => u64::try_from(st.st_size).map_err(|_| libc::EOVERFLOW)?,
        libc::S_IFDIR => return Err(libc::EISDIR),
        _ => return Err(NOT_REGULAR),
    };
    Ok((fd, size))
}

/// Run `start` with every signal blocked in the calling thread but the faults
/// it could raise itself (blocked, those make the kernel kill the process),
/// then restore the thread's mask. A thread started by `start` inherits the
/// block from its first instruction: one that blocked signals itself could
/// take one sent to the process before it did, and the interpreter, told of
/// a signal by a thread other than its main one, may not run the handler
/// until its main thread next waits. What arrives meanwhile stays pending and
/// is delivered once the mask is restored.
pub fn with_signals_blocked<T>(start: impl FnOnce() -> T) -> T {
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(set.as_mut_ptr());
        let mut set = set.assume_init();
        for fault in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSYS,
        ] {
            libc::sigdelset(&mut set, fault);
        }
        let mut previous = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, previous.as_mut_ptr());
        let started = start();
        libc::pthread_sigmask(libc::SIG_SETMASK, previous.as_ptr(), std::ptr::null_mut());
        started
    }
}

/// `lseek(fd, 0, SEEK_END)`: where the file ends. Unlike `fstat`, it does not
/// ask for the file's times (which makes its next write update them).
pub fn lseek_end(fd: &Fd) -> Result<u64, Errno> {
    let end = unsafe { libc::lseek(fd.0, 0, libc::SEEK_END) };
    u64::try_from(end).map_err(|_| last_errno())
}

/// `open(path, flags)`; relative paths resolve against the working directory.
pub fn open(path: &CStr, flags: libc::c_int) -> Result<Fd, Errno> {
    retrying(|| unsafe { libc::open(path.as_ptr(), flags) }).map(Fd)
}

/// `openat(dir, name, flags, mode)`.
pub fn openat(dir: &Fd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> Result<Fd, Errno> {
    retrying(|| unsafe { libc::openat(dir.0, name.as_ptr(), flags, libc::c_uint::from(mode)) })
        .map(Fd)
}

/// `flock(fd, operation)`.
pub fn flock(fd: &Fd, operation: libc::c_int) -> Result<(), Errno> {
    retrying(|| unsafe { libc::flock(fd.0, operation) }).map(drop)
}

/// Whether a failed `flock(LOCK_NB)` means another holder has the lock.
pub fn is_busy(errno: Errno) -> bool {
    errno == libc::EWOULDBLOCK || errno == libc::EAGAIN
}

/// Take the session directory's flock without waiting: false when a live writer
/// holds it, any other failure as its errno (the fallback's `try_lock`).
pub fn try_lock(dir: &Fd) -> Result<bool, Errno> {
    match flock(dir, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(true),
        Err(errno) if is_busy(errno) => Ok(false),
        Err(errno) => Err(errno),
    }
}

/// One `write(fd, data, len)`: the count the kernel accepted, retried on EINTR.
///
/// # Safety
/// `data` must be valid for reads of `len` bytes for the whole call.
pub unsafe fn write(fd: &Fd, data: *const u8, len: usize) -> Result<usize, Errno> {
    loop {
        let ret = unsafe { libc::write(fd.0, data.cast(), len) };
        if ret >= 0 {
            return Ok(ret.unsigned_abs());
        }
        let errno = last_errno();
        if errno != libc::EINTR {
            return Err(errno);
        }
    }
}

/// One `read(fd, buf, len)`: the count read, 0 at the end of the file.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes for the whole call.
pub unsafe fn read(fd: &Fd, buf: *mut u8, len: usize) -> Result<usize, Errno> {
    loop {
        let ret = unsafe { libc::read(fd.0, buf.cast(), len) };
        if ret >= 0 {
            return Ok(ret.unsigned_abs());
        }
        let errno = last_errno();
        if errno != libc::EINTR {
            return Err(errno);
        }
    }
}

/// One `pread(fd, buf, len, offset)`: the count read, 0 at the end of the file.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes for the whole call.
pub unsafe fn pread(fd: &Fd, buf: *mut u8, len: usize, offset: u64) -> Result<usize, Errno> {
    let offset = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
    loop {
        let ret = unsafe { libc::pread(fd.0, buf.cast(), len, offset) };
        if ret >= 0 {
            return Ok(ret.unsigned_abs());
        }
        let errno = last_errno();
        if errno != libc::EINTR {
            return Err(errno);
        }
    }
}

/// One `pwrite(fd, buf, offset)`: the count the kernel accepted, retried on EINTR.
pub fn pwrite(fd: &Fd, buf: &[u8], offset: u64) -> Result<usize, Errno> {
    let offset = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
    loop {
        let ret = unsafe { libc::pwrite(fd.0, buf.as_ptr().cast(), buf.len(), offset) };
        if ret >= 0 {
            return Ok(ret.unsigned_abs());
        }
        let errno = last_errno();
        if errno != libc::EINTR {
            return Err(errno);
        }
    }
}

/// One `pwritev(fd, iov, offset)`: the count the kernel accepted, retried on EINTR.
///
/// On Linux it is `pwritev2` with no flags, the call Python's `os.pwritev` makes.
///
/// # Safety
/// Every `iovec` must point at memory valid for reads of its length for the whole call.
pub unsafe fn pwritev(fd: &Fd, iov: &[libc::iovec], offset: u64) -> Result<usize, Errno> {
    let offset = libc::off_t::try_from(offset).map_err(|_| libc::EINVAL)?;
    let count = libc::c_int::try_from(iov.len()).map_err(|_| libc::EINVAL)?;
    loop {
        #[cfg(target_os = "linux")]
        let ret = unsafe { libc::pwritev2(fd.0, iov.as_ptr(), count, offset, 0) };
        #[cfg(not(target_os = "linux"))]
        let ret = unsafe { libc::pwritev(fd.0, iov.as_ptr(), count, offset) };
        if ret >= 0 {
            return Ok(ret.unsigned_abs());
        }
        let errno = last_errno();
        if errno != libc::EINTR {
            return Err(errno);
        }
    }
}

/// `fdatasync(fd)`: the data and what reading it back needs, not the times.
/// Where the C library has no `fdatasync` (Apple's), `fsync`, which does more.
pub fn fdatasync(fd: &Fd) -> Result<(), Errno> {
    #[cfg(not(target_vendor = "apple"))]
    return retrying(|| unsafe { libc::fdatasync(fd.0) }).map(drop);
    #[cfg(target_vendor = "apple")]
    return fsync(fd);
}

/// `fsync(fd)`.
pub fn fsync(fd: &Fd) -> Result<(), Errno> {
    retrying(|| unsafe { libc::fsync(fd.0) }).map(drop)
}

/// `renameat(dir, from, dir, to)`.
pub fn renameat(dir: &Fd, from: &CStr, to: &CStr) -> Result<(), Errno> {
    if unsafe { libc::renameat(dir.0, from.as_ptr(), dir.0, to.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

/// `unlinkat(dir, name, 0)`.
pub fn unlinkat(dir: &Fd, name: &CStr) -> Result<(), Errno> {
    if unsafe { libc::unlinkat(dir.0, name.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

/// A device number as the unsigned integer the kernel's lock table and
/// Python's `os.stat` give (`dev_t` is `u64` on Linux, `i32` on macOS).
#[allow(clippy::unnecessary_cast)]
pub fn dev_number(dev: libc::dev_t) -> u64 {
    dev as u64
}

/// `fstat(fd)`.
pub fn fstat(fd: &Fd) -> Result<libc::stat, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    if unsafe { libc::fstat(fd.0, st.as_mut_ptr()) } == 0 {
        Ok(unsafe { st.assume_init() })
    } else {
        Err(last_errno())
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; None when there is no such entry.
pub fn stat_at(dir: &Fd, name: &CStr) -> Result<Option<libc::stat>, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    let flags = libc::AT_SYMLINK_NOFOLLOW;
    if unsafe { libc::fstatat(dir.0, name.as_ptr(), st.as_mut_ptr(), flags) } == 0 {
        return Ok(Some(unsafe { st.assume_init() }));
    }
    match last_errno() {
        libc::ENOENT => Ok(None),
        errno => Err(errno),
    }
}

/// The C library's text for `errno`, the same text Python puts in `strerror`.
pub fn describe(errno: Errno) -> String {
    let mut buf = [0u8; 256];
    let ret = unsafe { libc::strerror_r(errno, buf.as_mut_ptr().cast(), buf.len()) };
    if ret != 0 {
        return format!("Unknown error {errno}");
    }
    CStr::from_bytes_until_nul(&buf)
        .map(|text| text.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("Unknown error {errno}"))
}

/// `path` as a C string, or None when it holds a NUL byte (no syscall can name it).
pub fn c_path(path: &[u8]) -> Option<CString> {
    CString::new(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_matches_the_c_library() {
        assert_eq!(describe(libc::ENOENT), "No such file or directory");
        assert_eq!(describe(libc::EEXIST), "File exists");
    }

    #[test]
    fn c_path_refuses_a_nul_byte() {
        assert!(c_path(b"a\0b").is_none());
        assert_eq!(c_path(b"ab").unwrap().as_bytes(), b"ab");
    }

    #[test]
    fn busy_means_would_block() {
        assert!(is_busy(libc::EWOULDBLOCK));
        assert!(!is_busy(libc::EBADF));
    }

    #[test]
    fn errno_is_cleared_and_read_back() {
        assert_eq!(unsafe { Fd::from_raw(-1) }.close(), Err(libc::EBADF));
        assert_eq!(last_errno(), libc::EBADF);
        clear_errno();
        assert_eq!(last_errno(), 0);
    }

    #[test]
    fn close_reports_a_bad_descriptor() {
        assert_eq!(unsafe { Fd::from_raw(-1) }.close(), Err(libc::EBADF));
    }
}
