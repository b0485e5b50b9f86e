//! Reading a whole checkpoint into memory the caller allocated once.
//!
//! The caller sizes its buffer from `fstat`, so the usual file needs no second
//! allocation and no copy; a file that changed size meanwhile is still read
//! whole (to the end of the file, as Python's `readall` does).

use std::ffi::CStr;

use crate::posix::{self, Errno, Fd};

/// An open file and the size `fstat` gave it.
pub struct Opened {
    pub fd: Fd,
    pub size: usize,
}

/// Open the regular file `path` for reading and learn its size (see
/// `posix::open_regular`); nothing is left open on failure.
pub fn open(path: &CStr) -> Result<Opened, Errno> {
    let (fd, size) = posix::open_regular(path)?;
    // A size beyond the address space (a 32-bit build) is too large to load.
    let size = usize::try_from(size).map_err(|_| libc::EFBIG)?;
    Ok(Opened { fd, size })
}

/// What `fill` read: how much of the buffer, and anything past its end.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filled {
    pub read: usize,
    pub beyond: Vec<u8>,
}

/// A raw destination for `fill`, which it alone writes to while it runs.
#[derive(Clone, Copy)]
pub struct Destination {
    ptr: *mut u8,
    len: usize,
}

// Nothing else touches the memory while `fill` writes it (the caller owns it
// and has not shared it yet).
unsafe impl Send for Destination {}

impl Destination {
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes, unaliased, while `fill` runs.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Self {
        Self { ptr, len }
    }

    pub fn of(buf: &mut [u8]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// Where the memory starts, for a reader of its own (a slots record).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

/// Read `fd` to its end: first into `dest` (as many reads as the kernel needs:
/// one read returns at most 0x7ffff000 bytes on Linux), then anything beyond.
pub fn fill(fd: &Fd, dest: Destination) -> Result<Filled, Errno> {
    let mut read = 0;
    while read < dest.len {
        let got = unsafe { posix::read(fd, dest.ptr.add(read), dest.len - read) }?;
        if got == 0 {
            return Ok(Filled {
                read,
                beyond: Vec::new(),
            });
        }
        read += got;
    }
    // The buffer is full: the file ends here unless it grew since fstat.
    let mut beyond = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let got = unsafe { posix::read(fd, chunk.as_mut_ptr(), chunk.len()) }?;
        if got == 0 {
            return Ok(Filled { read, beyond });
        }
        // Memory that cannot be had is an error, never an abort.
        beyond.try_reserve(got).map_err(|_| libc::ENOMEM)?;
        beyond.extend_from_slice(&chunk[..got]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    fn file(name: &str, data: &[u8]) -> (PathBuf, CString) {
        let path =
            std::env::temp_dir().join(format!("sessionstore-load-{name}-{}", std::process::id()));
        fs::write(&path, data).unwrap();
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        (path, c)
    }

    #[test]
    fn reads_a_file_of_the_size_fstat_gave() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        let (path, c) = file("exact", &data);
        let opened = open(&c).unwrap();
        assert_eq!(opened.size, data.len());
        let mut buf = vec![0u8; opened.size];
        let filled = fill(&opened.fd, Destination::of(&mut buf)).unwrap();
        opened.fd.close().unwrap();
        fs::remove_file(path).unwrap();
        assert_eq!(filled.read, data.len());
        assert!(filled.beyond.is_empty());
        assert_eq!(buf, data);
    }

    #[test]
    fn a_file_longer_than_the_buffer_is_read_to_its_end() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let (path, c) = file("grown", &data);
        let opened = open(&c).unwrap();
        let mut buf = vec![0u8; 100];
        let filled = fill(&opened.fd, Destination::of(&mut buf)).unwrap();
        opened.fd.close().unwrap();
        fs::remove_file(path).unwrap();
        assert_eq!(filled.read, 100);
        assert_eq!(buf, data[..100]);
        assert_eq!(filled.beyond, data[100..]);
    }

    #[test]
    fn a_file_shorter_than_the_buffer_stops_at_its_end() {
        let (path, c) = file("short", b"abc");
        let opened = open(&c).unwrap();
        let mut buf = vec![0u8; 10];
        let filled = fill(&opened.fd, Destination::of(&mut buf)).unwrap();
        opened.fd.close().unwrap();
        fs::remove_file(path).unwrap();
        assert_eq!(filled.read, 3);
        assert_eq!(&buf[..3], b"abc");
    }

    #[test]
    fn a_missing_file_is_enoent() {
        assert_eq!(
            open(c"/nonexistent/sessionstore/file").err(),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn a_directory_is_refused_before_reading() {
        assert_eq!(open(c"/").err(), Some(libc::EISDIR));
    }

    #[test]
    fn a_device_that_never_ends_is_refused_before_reading() {
        assert_eq!(open(c"/dev/zero").err(), Some(posix::NOT_REGULAR));
    }
}
