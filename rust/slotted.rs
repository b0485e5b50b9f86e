//! The slotted layout's save and load: `sessionstore._fallback.slotted` in Rust.
//!
//! A save executes the in-place codes of `SlottedPlan` (the same `SaveStep`
//! numbers, run by `save::run`; the slotted steps' bodies are here): the new
//! record goes over the slot that does not hold the newest valid record, then
//! one `fdatasync`. When there is no slots file yet, or the record does not
//! fit, the save goes on, still holding the directory's lock, with the rebuild
//! codes run on a whole new file. Plain Rust, without Python, so the extension
//! runs all of it with the GIL released.

use std::ffi::CStr;

use crate::posix::{self, Errno, Fd};
use crate::save::{self, At, Checkpoint, Failure, Names, Part, SaveError, State, Steps};
use crate::save_plan::{step, CHECKPOINT_NAME, NEXT_NAME, SLOTS_NAME};
use crate::slots_format::{
    build_slots_file, choose_slot, decode_file_header, decode_record_header, encode_record_header,
    newest_first, FileHeader, FormatError, Headers, Placement, RecordHeader, HEAD_READ_SIZE,
    RECORD_HEADER_SIZE,
};

/// Never through a symlink: that would write into whatever file it names.
const SLOTS_FLAGS: libc::c_int = libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW;
/// A save reads the slots before it writes one; with the access time left
/// alone, that read changes no metadata (each access time update is a journal
/// entry, about a sixth of the floor's cost on ext4). Only the file's owner may
/// ask for it: anyone else opens without it (EPERM, then a second open).
#[cfg(target_os = "linux")]
const NO_ATIME: libc::c_int = libc::O_NOATIME;
#[cfg(not(target_os = "linux"))]
const NO_ATIME: libc::c_int = 0;
/// The flags a load opens a slots file with.
pub const READ_FLAGS: libc::c_int = posix::READ_FLAGS;

/// Why reading a slots file failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    Os(Errno),
    Corrupt(FormatError),
}

/// What a read of a slots file found: its geometry, its record headers, and
/// where the file ends: a record claiming bytes beyond that is damaged, and is
/// never read (a header may claim gigabytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub header: FileHeader,
    pub headers: Headers,
    pub size: u64,
}

impl View {
    /// The record in `slot` when the file is long enough to hold all of it.
    pub fn record(&self, slot: usize) -> Option<RecordHeader> {
        self.headers[slot].filter(|record| {
            let start = self.header.slot_offset(slot) + RECORD_HEADER_SIZE as u64;
            start
                .checked_add(record.length)
                .is_some_and(|end| end <= self.size)
        })
    }
}

/// Where the file ends (`lseek`), then the file header and both record
/// headers: two `pread`s.
pub fn read_view(fd: &Fd) -> Result<View, ReadError> {
    let size = posix::lseek_end(fd).map_err(ReadError::Os)?;
    let mut block = [0u8; HEAD_READ_SIZE];
    let got =
        unsafe { posix::pread(fd, block.as_mut_ptr(), block.len(), 0) }.map_err(ReadError::Os)?;
    let block = &block[..got];
    let header = decode_file_header(block).map_err(ReadError::Corrupt)?;
    let first = decode_record_header(
        block
            .get(HEAD_READ_SIZE - RECORD_HEADER_SIZE..)
            .unwrap_or_default(),
        header.slot_size,
    );
    let mut second = [0u8; RECORD_HEADER_SIZE];
    let got = unsafe { posix::pread(fd, second.as_mut_ptr(), second.len(), header.slot_offset(1)) }
        .map_err(ReadError::Os)?;
    let second = decode_record_header(&second[..got], header.slot_size);
    Ok(View {
        header,
        headers: [first, second],
        size,
    })
}

/// How often a load reads the slots again while concurrent saves change them
/// (the fallback's `_READS`).
pub const SLOT_READS: usize = 100;

/// Up to `wanted` whole records of a slots file, newest first: `read_view`
/// reads its headers, `read_whole` one record (the slot and its header given)
/// into memory of its own, `Some` when the record is whole. A record the file
/// is too short for is damaged: it is never read.
///
/// A load takes no lock: two saves during one load may overwrite both slots
/// after their headers were read, so no record read is whole. Headers that
/// changed since mean exactly that, and the load reads again; unchanged
/// headers with no whole record mean a damaged file (nothing is found).
pub fn newest_records<T, E>(
    wanted: usize,
    mut read_view: impl FnMut() -> Result<View, E>,
    mut read_whole: impl FnMut(&View, usize, RecordHeader) -> Result<Option<T>, E>,
) -> Result<Vec<T>, E> {
    let mut view = read_view()?;
    for _ in 0..SLOT_READS {
        let mut found = Vec::new();
        for slot in newest_first(&view.headers) {
            let Some(record) = view.record(slot) else {
                continue;
            };
            if let Some(whole) = read_whole(&view, slot, record)? {
                found.push(whole);
                if found.len() == wanted {
                    break;
                }
            }
        }
        if !found.is_empty() {
            return Ok(found);
        }
        let again = read_view()?;
        if again == view {
            break;
        }
        view = again;
    }
    Ok(Vec::new())
}

/// Read the data of the record in `slot` into `dest` and check it: whether the
/// record is whole. Reads go on after a short one (a single read stops short of
/// 2 GiB) and stop at the end of the file.
///
/// # Safety
/// `dest` must be valid for writes of the record's length, and unaliased.
pub unsafe fn read_record(fd: &Fd, view: &View, slot: usize, dest: *mut u8) -> Result<bool, Errno> {
    let Some(record) = view.record(slot) else {
        return Ok(false);
    };
    let length = usize::try_from(record.length).map_err(|_| libc::EOVERFLOW)?;
    let offset = view.header.slot_offset(slot) + RECORD_HEADER_SIZE as u64;
    let mut read = unsafe { posix::pread(fd, dest, length, offset) }?;
    while read < length {
        let got = unsafe { posix::pread(fd, dest.add(read), length - read, offset + read as u64) }?;
        if got == 0 {
            return Ok(false);
        }
        read += got;
    }
    Ok(record.crc_matches(unsafe { std::slice::from_raw_parts(dest, length) }))
}

/// A whole record read back: its sequence number and data.
struct ValidRecord {
    slot: usize,
    sequence: u64,
    data: Vec<u8>,
}

/// The newest whole record, reading newest first and no more than needed.
fn newest_valid(fd: &Fd, view: &View) -> Result<Option<ValidRecord>, Failure> {
    let os = Failure::os(At::Slots);
    for slot in newest_first(&view.headers) {
        let Some(record) = view.record(slot) else {
            continue;
        };
        let length = usize::try_from(record.length).map_err(|_| os(libc::EOVERFLOW))?;
        let mut data = Vec::new();
        data.try_reserve_exact(length)
            .map_err(|_| Failure::NoMemory)?;
        if unsafe { read_record(fd, view, slot, data.as_mut_ptr()) }.map_err(os)? {
            // read_record filled all `length` bytes when it says the record is whole.
            unsafe { data.set_len(length) };
            return Ok(Some(ValidRecord {
                slot,
                sequence: record.sequence,
                data,
            }));
        }
    }
    Ok(None)
}

/// Execute a slotted save plan in `location`: `in_place`, or `rebuild` when it
/// must. On failure every descriptor it opened is closed, and nothing it did is
/// left behind (a rebuild unlinks its next file).
pub fn save_slotted(
    location: &CStr,
    in_place: &[u8],
    rebuild: &[u8],
    data: Checkpoint,
) -> Result<(), SaveError> {
    save::one_shot(|state| run_slotted(location, state, in_place, rebuild, data))
}

/// The names a slotted save acts on.
pub fn names(location: &CStr) -> Names<'_> {
    Names {
        location,
        next_name: NEXT_NAME,
        target: SLOTS_NAME,
    }
}

/// Execute the plan on `state`, which a held session keeps between saves:
/// `in_place`, then `rebuild` when a step found it due. Closes nothing on
/// failure: `save_slotted`, or the held session's release, does. After a
/// failure the state no longer claims to know the slots, so the next save
/// reads them.
pub fn run_slotted(
    location: &CStr,
    state: &mut State,
    in_place: &[u8],
    rebuild: &[u8],
    data: Checkpoint,
) -> Result<(), SaveError> {
    state.choice = None;
    state.written = None;
    let outcome = run_in_place_or_rebuild(&names(location), state, in_place, rebuild, data);
    match (&outcome, state.view.as_mut(), state.choice, state.written) {
        (Ok(true), Some(view), Some(choice), Some(written)) => {
            view.headers[choice.slot] = Some(written);
            state.known = true;
        }
        _ => {
            state.view = None;
            state.known = false;
        }
    }
    outcome.map(drop)
}

/// The in-place steps, then the rebuild when one is due: whether the record
/// went in place.
fn run_in_place_or_rebuild(
    names: &Names<'_>,
    state: &mut State,
    in_place: &[u8],
    rebuild: &[u8],
    data: Checkpoint,
) -> Result<bool, SaveError> {
    if save::run(names, state, in_place, Steps::Slotted, data)? {
        return Ok(true);
    }
    // The slots file is closed, checked, before the rebuild renames a new one
    // over it: a step of its own, so its failure is reported and undone as any.
    save::run(names, state, &[step::CLOSE_SLOTS], Steps::Slotted, data)?;
    let sequence = state.choice.map_or(1, |choice| choice.sequence);
    let previous = state.previous.take();
    let previous = previous.as_ref().map(|(seq, body)| (*seq, &body[..]));
    let Some(image) = build_slots_file(unsafe { data.as_slice() }, sequence, previous) else {
        return Err(SaveError {
            failure: Failure::NoMemory,
            steps: Steps::Slotted,
            part: Part::Given,
            cleanup: None,
        });
    };
    save::run(
        names,
        state,
        rebuild,
        Steps::Replace,
        Checkpoint::of(&image),
    )
    .map_err(|error| SaveError {
        part: Part::Rebuild,
        ..error
    })?;
    Ok(false)
}

/// `CHECK_NEXT`: a leftover next file locks a slotted session too.
pub(crate) fn check_next(state: &State) -> Result<(), Failure> {
    let dir = state.dir(At::Next)?;
    match posix::stat_at(dir, NEXT_NAME).map_err(Failure::os(At::Next))? {
        Some(_) => Err(Failure::Leftover),
        None => Ok(()),
    }
}

/// `CHECK_REPLACE`: a session in the replace layout is not overwritten.
pub(crate) fn check_replace(state: &State) -> Result<(), Failure> {
    let dir = state.dir(At::Checkpoint)?;
    match posix::stat_at(dir, CHECKPOINT_NAME).map_err(Failure::os(At::Checkpoint))? {
        Some(_) => Err(Failure::ReplaceLayout),
        None => Ok(()),
    }
}

/// `OPEN_SLOTS`: open the slots file unless it is open; false (a rebuild)
/// when it is missing.
pub(crate) fn open_slots(state: &mut State) -> Result<bool, Failure> {
    if state.slots.is_some() {
        return Ok(true);
    }
    let dir = state.dir(At::Slots)?;
    let mut opened = posix::openat(dir, SLOTS_NAME, SLOTS_FLAGS | NO_ATIME, 0);
    if NO_ATIME != 0 && matches!(opened, Err(libc::EPERM)) {
        opened = posix::openat(dir, SLOTS_NAME, SLOTS_FLAGS, 0);
    }
    match opened {
        Ok(fd) => state.slots = Some(fd),
        Err(libc::ENOENT) => return Ok(false),
        Err(errno) => return Err(Failure::os(At::Slots)(errno)),
    }
    Ok(true)
}

/// `CHECK_DIR_LINKED`: a session directory that was removed is refused.
pub(crate) fn check_dir_linked(state: &State) -> Result<(), Failure> {
    let stat = posix::fstat(state.dir(At::Location)?).map_err(Failure::os(At::Location))?;
    if stat.st_nlink == 0 {
        return Err(Failure::os(At::Location)(libc::ENOENT));
    }
    Ok(())
}

/// `READ_SLOTS`: choose the slot; false when the save must rebuild the file
/// instead.
pub(crate) fn read_slots(state: &mut State, data: Checkpoint) -> Result<bool, Failure> {
    if state.known && choose_known(state, data)? {
        return Ok(true);
    }
    let slots = slots_file(state)?;
    let view = read_view(slots).map_err(|error| match error {
        ReadError::Os(errno) => Failure::os(At::Slots)(errno),
        ReadError::Corrupt(reason) => Failure::Corrupt(reason),
    })?;
    let newest = newest_valid(slots, &view)?;
    let order = newest_first(&view.headers);
    let newest_is_valid = newest
        .as_ref()
        .is_some_and(|r| order.first() == Some(&r.slot));
    let mut choice = choose_slot(
        view.header,
        &view.headers,
        newest_is_valid,
        data.len() as u64,
    )
    .map_err(Failure::Format)?;
    if view.size < view.header.file_size() {
        // Shorter than its header says: damaged, and an in-place write could
        // land gigabytes past its end. A new file.
        choice.placement = Placement::Rebuild;
    }
    state.view = Some(view);
    state.choice = Some(choice);
    if choice.placement == Placement::Rebuild {
        state.previous = newest.map(|record| (record.sequence, record.data));
        return Ok(false);
    }
    Ok(true)
}

/// Choose the slot from what a held session knows, without reading: false
/// when the record does not fit, as a rebuild needs the newest record's data.
fn choose_known(state: &mut State, data: Checkpoint) -> Result<bool, Failure> {
    let Some(view) = state.view else {
        return Ok(false);
    };
    let choice = choose_slot(view.header, &view.headers, true, data.len() as u64)
        .map_err(Failure::Format)?;
    if choice.placement == Placement::Rebuild {
        return Ok(false);
    }
    state.choice = Some(choice);
    Ok(true)
}

/// `WRITE_SLOT`: the record header and data over the chosen slot.
pub(crate) fn write_slot(state: &mut State, data: Checkpoint) -> Result<(), Failure> {
    let (Some(view), Some(choice)) = (state.view, state.choice) else {
        return Err(Failure::NotChosen);
    };
    let head = encode_record_header(choice.sequence, unsafe { data.as_slice() });
    pwrite_all(
        slots_file(state)?,
        &head,
        data,
        view.header.slot_offset(choice.slot),
    )?;
    state.written = decode_record_header(&head, view.header.slot_size);
    Ok(())
}

/// `SYNC_SLOT`: the one flush of a durable in-place save; a record whose flush
/// failed is hidden.
pub(crate) fn sync_slot(state: &State) -> Result<(), Failure> {
    let slots = slots_file(state)?;
    if let Err(errno) = posix::fdatasync(slots) {
        let hide = match (state.view, state.choice) {
            (Some(view), Some(choice)) => {
                hide_record(slots, view.header.slot_offset(choice.slot)).err()
            }
            _ => None,
        };
        return Err(Failure::Unsynced { errno, hide });
    }
    Ok(())
}

/// `CLOSE_SLOTS`: close the slots file, checked; nothing when it is not open.
pub(crate) fn close_slots(state: &mut State) -> Result<(), Failure> {
    match state.slots.take() {
        Some(slots) => slots.close().map_err(Failure::os(At::Slots)),
        None => Ok(()),
    }
}

/// The slots file, open; EBADF when it is not, as a syscall on it says.
fn slots_file(state: &State) -> Result<&Fd, Failure> {
    state.slots.as_ref().ok_or(Failure::Os {
        errno: libc::EBADF,
        at: At::Slots,
    })
}

/// Zero the header of the record at `at`: a record whose flush failed may not be
/// on disk, so no load may return it (the other slot's record loads instead).
fn hide_record(fd: &Fd, at: u64) -> Result<(), Errno> {
    let zeroes = [0u8; RECORD_HEADER_SIZE];
    match posix::pwrite(fd, &zeroes, at)? {
        RECORD_HEADER_SIZE => Ok(()),
        _ => Err(libc::EIO),
    }
}

/// Write the record header then the data from offset `at`: one `pwritev`, and
/// more only after a short write.
fn pwrite_all(fd: &Fd, head: &[u8], data: Checkpoint, mut at: u64) -> Result<(), Failure> {
    let mut parts = [
        libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        },
    ];
    let mut first = 0;
    while first < parts.len() {
        let mut step =
            unsafe { posix::pwritev(fd, &parts[first..], at) }.map_err(Failure::os(At::Slots))?;
        if step == 0 {
            return Err(Failure::NoProgress { at: At::Slots });
        }
        at += step as u64;
        while first < parts.len() && step >= parts[first].iov_len {
            step -= parts[first].iov_len;
            first += 1;
        }
        if let Some(part) = parts.get_mut(first) {
            part.iov_base = unsafe { part.iov_base.cast::<u8>().add(step) }.cast();
            part.iov_len -= step;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots_format::{decode_file_header, FILE_HEADER_SIZE};
    use std::ffi::CString;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    const IN_PLACE: &[u8] = &[1, 2, 10, 11, 12, 13, 14, 15, 16, 9];
    const REBUILD: &[u8] = &[3, 4, 5, 6, 7, 8, 9];

    use crate::test_dir::TempDir;

    fn save_with(location: &Path, in_place: &[u8], data: &[u8]) -> Result<(), Failure> {
        let location = CString::new(location.as_os_str().as_bytes()).unwrap();
        save_slotted(&location, in_place, REBUILD, Checkpoint::of(data)).map_err(|e| e.failure)
    }

    fn save(location: &Path, data: &[u8]) -> Result<(), Failure> {
        save_with(location, IN_PLACE, data)
    }

    /// The valid records of a slots file, newest first (what a load sees).
    fn load(path: &Path, wanted: usize) -> Result<Vec<Vec<u8>>, ReadError> {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        let fd = posix::open(&c, READ_FLAGS).map_err(ReadError::Os)?;
        let view = read_view(&fd)?;
        let mut found = Vec::new();
        for slot in newest_first(&view.headers) {
            let mut data = vec![0u8; view.headers[slot].unwrap().length as usize];
            if unsafe { read_record(&fd, &view, slot, data.as_mut_ptr()) }.unwrap() {
                found.push(data);
                if found.len() == wanted {
                    break;
                }
            }
        }
        fd.close().unwrap();
        Ok(found)
    }

    #[test]
    fn saves_alternate_slots_in_place_and_keep_two_generations() {
        let dir = TempDir::new("slotted", "alternate");
        save(&dir.0, b"one").unwrap();
        let inode = fs::metadata(dir.slots()).unwrap().ino();
        save(&dir.0, b"two").unwrap();
        save(&dir.0, b"three").unwrap();
        assert_eq!(fs::metadata(dir.slots()).unwrap().ino(), inode);
        assert_eq!(load(&dir.slots(), 2).unwrap(), [&b"three"[..], b"two"]);
        assert_eq!(dir.entries(), ["session.slots"]);
    }

    #[test]
    fn a_record_that_does_not_fit_rebuilds_keeping_the_previous_one() {
        let dir = TempDir::new("slotted", "rebuild");
        save(&dir.0, b"small").unwrap();
        let before = fs::metadata(dir.slots()).unwrap();
        let big = vec![7u8; 100_000];
        save(&dir.0, &big).unwrap();
        let after = fs::metadata(dir.slots()).unwrap();
        assert_ne!(after.ino(), before.ino());
        assert_eq!(after.len(), FILE_HEADER_SIZE + 2 * 131_072);
        assert_eq!(load(&dir.slots(), 2).unwrap(), [&big[..], b"small"]);
        assert_eq!(dir.entries(), ["session.slots"]);
    }

    #[test]
    fn a_torn_newest_record_is_overwritten_not_the_valid_one() {
        let dir = TempDir::new("slotted", "torn");
        save(&dir.0, b"good").unwrap();
        save(&dir.0, b"torn").unwrap();
        let mut image = fs::read(dir.slots()).unwrap();
        let header = decode_file_header(&image).unwrap();
        let at = header.slot_offset(1) as usize + RECORD_HEADER_SIZE;
        image[at] ^= 1;
        fs::write(dir.slots(), &image).unwrap();
        assert_eq!(load(&dir.slots(), 2).unwrap(), [b"good"]);
        save(&dir.0, b"new").unwrap();
        assert_eq!(load(&dir.slots(), 2).unwrap(), [&b"new"[..], b"good"]);
    }

    #[test]
    fn the_lock_and_the_other_layout_are_respected() {
        let dir = TempDir::new("slotted", "refusals");
        save(&dir.0, b"kept").unwrap();
        fs::write(dir.0.join("session.next"), b"").unwrap();
        assert_eq!(save(&dir.0, b"new"), Err(Failure::Leftover));
        fs::remove_file(dir.0.join("session.next")).unwrap();
        fs::write(dir.0.join("session"), b"replace").unwrap();
        assert_eq!(save(&dir.0, b"new"), Err(Failure::ReplaceLayout));
        fs::remove_file(dir.0.join("session")).unwrap();
        let location = CString::new(dir.0.as_os_str().as_bytes()).unwrap();
        let holder = posix::open(&location, posix::DIR_FLAGS).unwrap();
        posix::flock(&holder, libc::LOCK_EX | libc::LOCK_NB).unwrap();
        let held = save(&dir.0, b"new");
        holder.close().unwrap();
        assert_eq!(held, Err(Failure::Held));
        assert_eq!(load(&dir.slots(), 2).unwrap(), [b"kept"]);
    }

    #[test]
    fn a_damaged_file_header_is_reported() {
        let dir = TempDir::new("slotted", "corrupt");
        fs::write(dir.slots(), vec![0u8; 12_288]).unwrap();
        assert_eq!(
            save(&dir.0, b"x"),
            Err(Failure::Corrupt(FormatError::BadMagic))
        );
        assert_eq!(
            load(&dir.slots(), 1),
            Err(ReadError::Corrupt(FormatError::BadMagic))
        );
    }

    #[test]
    fn malformed_plans_fail_cleanly() {
        let dir = TempDir::new("slotted", "plans");
        save(&dir.0, b"x").unwrap();
        assert_eq!(
            save_with(&dir.0, &[1, 2, 12, 14], b"y"),
            Err(Failure::NotChosen)
        );
        assert_eq!(
            save_with(&dir.0, &[1, 2, 42], b"y"),
            Err(Failure::UnknownStep(42))
        );
        assert_eq!(load(&dir.slots(), 2).unwrap(), [b"x"]);
    }

    #[test]
    fn a_failed_rebuild_is_reported_as_the_rebuild_s_and_undone() {
        let dir = TempDir::new("slotted", "rebuild-fails");
        let location = CString::new(dir.0.as_os_str().as_bytes()).unwrap();
        // No slots file: the save rebuilds, and its plan breaks after creating the next file.
        let err = save_slotted(
            &location,
            IN_PLACE,
            &[step::CREATE_NEXT, 42],
            Checkpoint::of(b"x"),
        )
        .unwrap_err();
        assert_eq!(err.failure, Failure::UnknownStep(42));
        assert_eq!((err.steps, err.part), (Steps::Replace, Part::Rebuild));
        assert!(dir.entries().is_empty());
        // The lock went with the save: the next one goes through.
        save(&dir.0, b"y").unwrap();
        assert_eq!(load(&dir.slots(), 1).unwrap(), [b"y"]);
    }

    fn view_of(path: &Path) -> View {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        let fd = posix::open(&c, READ_FLAGS).unwrap();
        let view = read_view(&fd).unwrap();
        fd.close().unwrap();
        view
    }

    #[test]
    fn a_load_reads_again_only_while_the_headers_change() {
        let dir = TempDir::new("slotted", "reads");
        save(&dir.0, b"one").unwrap();
        save(&dir.0, b"two").unwrap();
        let view = view_of(&dir.slots());
        let moved = View {
            size: view.size + 1,
            ..view
        };
        let newest = newest_first(&view.headers)[0];
        // Both records read whole: the newest first, up to `wanted`.
        let slots: Result<Vec<usize>, ()> =
            newest_records(2, || Ok(view), |_, slot, _| Ok(Some(slot)));
        assert_eq!(slots.unwrap().len(), 2);
        let slots: Result<Vec<usize>, ()> =
            newest_records(1, || Ok(view), |_, slot, _| Ok(Some(slot)));
        assert_eq!(slots.unwrap(), [newest]);
        // Headers that changed: read again, and the records are whole this time.
        let mut views = [view, moved].into_iter().cycle();
        let mut reads = 0;
        let slots: Result<Vec<usize>, ()> = newest_records(
            1,
            || Ok(views.next().unwrap()),
            |seen, slot, _| {
                reads += 1;
                Ok((*seen == moved).then_some(slot))
            },
        );
        assert_eq!(slots.unwrap(), [newest]);
        assert_eq!(reads, 3);
        // Unchanged headers and no whole record: damaged, after one look again.
        let mut looks = 0;
        let slots: Result<Vec<usize>, ()> = newest_records(
            1,
            || {
                looks += 1;
                Ok(view)
            },
            |_, _, _| Ok(None),
        );
        assert!(slots.unwrap().is_empty());
        assert_eq!(looks, 2);
        // Headers that never settle: given up after `SLOT_READS` rounds.
        let mut views = [view, moved].into_iter().cycle();
        let mut looks = 0;
        let slots: Result<Vec<usize>, ()> = newest_records(
            1,
            || {
                looks += 1;
                Ok(views.next().unwrap())
            },
            |_, _, _| Ok(None),
        );
        assert!(slots.unwrap().is_empty());
        assert_eq!(looks, SLOT_READS + 1);
    }

    #[test]
    fn a_missing_session_fails_at_the_location() {
        let dir = TempDir::new("slotted", "missing");
        assert_eq!(
            save(&dir.0.join("gone"), b"x"),
            Err(Failure::Os {
                errno: libc::ENOENT,
                at: At::Location
            })
        );
    }
}
