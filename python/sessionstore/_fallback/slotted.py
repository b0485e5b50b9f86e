"""The slotted layout in Python: same plan, same syscalls as the native ``slotted``.

A save overwrites the slot that does not hold the newest valid record and
flushes it with one ``fdatasync``; when there is no slots file yet, or the record
does not fit, it rebuilds the file through the replace sequence, still under the
directory's lock.
"""

from __future__ import annotations

import errno
import os
from typing import Final

import attrs

from .. import _errors
from .._errors import CorruptCheckpointError
from .._naming import CHECKPOINT_NAME, NEXT_NAME, SLOTS_NAME
from .._save_plan import SaveStep
from .._slots_format import (
    FILE_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    FileHeader,
    Placement,
    RecordHeader,
    SlotChoice,
    SlotsFormatError,
    build_slots_file,
    choose_slot,
    decode_file_header,
    decode_record_header,
    encode_record_header,
    newest_first,
)
from .posix import DIR_FLAGS, exists_at, open_regular, try_lock
from .save import save

# Never through a symlink: that would write into whatever file it names.
_SLOTS_FLAGS: Final = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
# A save reads the slots before it writes one; with the access time left alone,
# that read changes no metadata (each access time update is a journal entry,
# about a sixth of the one flush's cost on ext4). Only the file's owner may ask
# for it: anyone else opens without it (EPERM, then a second open).
_NO_ATIME: Final = getattr(os, "O_NOATIME", 0)

_OPEN_DIR: Final = SaveStep.OPEN_DIR.value
_LOCK_DIR: Final = SaveStep.LOCK_DIR.value
_CHECK_NEXT: Final = SaveStep.CHECK_NEXT.value
_CHECK_REPLACE: Final = SaveStep.CHECK_REPLACE.value
_OPEN_SLOTS: Final = SaveStep.OPEN_SLOTS.value
_READ_SLOTS: Final = SaveStep.READ_SLOTS.value
_WRITE_SLOT: Final = SaveStep.WRITE_SLOT.value
_SYNC_SLOT: Final = SaveStep.SYNC_SLOT.value
_CLOSE_SLOTS: Final = SaveStep.CLOSE_SLOTS.value
_CLOSE_DIR: Final = SaveStep.CLOSE_DIR.value
_CHECK_DIR_LINKED: Final = SaveStep.CHECK_DIR_LINKED.value


@attrs.frozen
class SlotsView:
    """What a read of a slots file found: its geometry, its records, its size.

    ``size`` is where the file ends: a record claiming bytes beyond it is
    damaged, and is never read (a header may claim gigabytes).
    """

    header: FileHeader
    headers: tuple[RecordHeader | None, RecordHeader | None]
    size: int

    def holds(self, slot: int, record: RecordHeader) -> bool:
        """Whether the file is long enough for all of ``record`` in ``slot``."""
        end = self.header.slot_offset(slot) + RECORD_HEADER_SIZE + record.length
        return end <= self.size


def _read_view(fd: int, path: str) -> SlotsView:
    # Where the file ends, from lseek: an fstat would ask for the file's times,
    # which makes its next write update them (see CHECK_DIR_LINKED).
    size = os.lseek(fd, 0, os.SEEK_END)
    block = os.pread(fd, FILE_HEADER_SIZE + RECORD_HEADER_SIZE, 0)
    try:
        header = decode_file_header(block)
    except SlotsFormatError as exc:
        raise CorruptCheckpointError(path, str(exc)) from None
    first = decode_record_header(block[FILE_HEADER_SIZE:], header.slot_size)
    second = decode_record_header(
        os.pread(fd, RECORD_HEADER_SIZE, header.slot_offset(1)), header.slot_size
    )
    return SlotsView(header, (first, second), size)


@attrs.frozen
class ValidRecord:
    """A record that passed its checksum, and where it is."""

    slot: int
    sequence: int
    data: bytes


def _read_record(fd: int, view: SlotsView, slot: int) -> ValidRecord | None:
    """The record in ``slot`` when it is whole, else None."""
    record = view.headers[slot]
    if record is None or not view.holds(slot, record):
        return None
    offset = view.header.slot_offset(slot) + RECORD_HEADER_SIZE
    data = os.pread(fd, record.length, offset)
    # One pread returns at most 2 GiB - 4 KiB; the end of the file stops it.
    while len(data) < record.length:
        more = os.pread(fd, record.length - len(data), offset + len(data))
        if not more:
            break
        data += more
    if len(data) != record.length or not record.crc_matches(data):
        return None
    return ValidRecord(slot, record.sequence, data)


def _valid_records(fd: int, view: SlotsView, wanted: int) -> list[ValidRecord]:
    """Up to ``wanted`` whole records, newest first, reading no more than needed."""
    found = []
    for slot in newest_first(view.headers):
        record = _read_record(fd, view, slot)
        if record is not None:
            found.append(record)
            if len(found) == wanted:
                break
    return found


def _pwrite_all(fd: int, parts: list[memoryview], at: int) -> None:
    """Write ``parts`` in order from offset ``at``, completing short writes."""
    while parts:
        step = os.pwritev(fd, parts, at)
        if step == 0:
            raise OSError(errno.EIO, "write made no progress")
        at += step
        while parts and step >= len(parts[0]):
            step -= len(parts[0])
            parts.pop(0)
        if parts:
            parts[0] = parts[0][step:]


def _hide_record(fd: int, at: int, failure: OSError) -> None:
    """Zero the header of the record at ``at``, whose flush failed with ``failure``.

    That record may not be on disk, so no load may return it: the other slot's
    record loads instead, as it would after a power cut. A failure to hide it
    becomes the context of ``failure``, which is still the error raised.
    """
    try:
        if os.pwrite(fd, bytes(RECORD_HEADER_SIZE), at) != RECORD_HEADER_SIZE:
            raise OSError(errno.EIO, "short write hiding an unsynced record")
    except OSError:
        raise failure  # noqa: B904


class SlotsState:
    """What a save has open and knows: one save's, or a held session's across saves.

    ``known`` says ``view`` is what is on disk: true after a held session's own
    successful save, as nobody else writes while it holds the lock.
    """

    __slots__ = ("choice", "dir_fd", "known", "previous", "slots_fd", "view", "written")

    def __init__(self) -> None:
        self.dir_fd = -1
        self.slots_fd = -1
        self.view: SlotsView | None = None
        self.choice: SlotChoice | None = None
        self.previous: tuple[int, bytes] | None = None
        self.written: RecordHeader | None = None
        self.known = False

    def close(self) -> None:
        """Close what is still open: the slots file, then the directory."""
        slots_fd, self.slots_fd = self.slots_fd, -1
        dir_fd, self.dir_fd = self.dir_fd, -1
        _close(slots_fd, dir_fd)


def save_slotted(
    location: str,
    data: bytes | bytearray | memoryview,
    in_place: bytes,
    rebuild: bytes,
) -> None:
    """Execute a slotted save plan: ``in_place``, or ``rebuild`` when it must."""
    state = SlotsState()
    try:
        run_on(state, location, data, in_place, rebuild)
    finally:
        # A well-formed plan closed both; a plan that did not must not leak them.
        state.close()


def run_on(
    state: SlotsState,
    location: str,
    data: bytes | bytearray | memoryview,
    in_place: bytes,
    rebuild: bytes,
) -> None:
    """Execute the plan on ``state``, which a held session keeps between saves.

    Closes nothing on failure: ``save``, or the held session's release, does.
    After a failure the state no longer claims to know the slots, so the next
    save reads them.
    """
    state.choice = None
    state.written = None
    in_place_done = False
    try:
        in_place_done = _run_steps(state, location, data, in_place, rebuild)
    finally:
        view, choice, written = state.view, state.choice, state.written
        if in_place_done and view and choice and written:
            headers = list(view.headers)
            headers[choice.slot] = written
            state.view = SlotsView(view.header, (headers[0], headers[1]), view.size)
            state.known = True
        else:
            state.view = None
            state.known = False


def _choose_known(state: SlotsState, size: int) -> bool:
    """Choose the slot from what a held session knows, without reading: False
    when the record does not fit, as a rebuild needs the newest record's data."""
    view = state.view
    if view is None:
        return False
    choice = choose_slot(view.header, view.headers, True, size)
    if choice.placement is Placement.REBUILD:
        return False
    state.choice = choice
    return True


def _run_steps(
    state: SlotsState,
    location: str,
    data: bytes | bytearray | memoryview,
    in_place: bytes,
    rebuild: bytes,
) -> bool:
    """The steps, then the rebuild when one is due: whether the record went in place."""
    next_path = os.path.join(location, NEXT_NAME)
    slots_path = os.path.join(location, SLOTS_NAME)
    path = location
    try:
        for code in in_place:
            if code == _OPEN_DIR:
                path = location
                state.dir_fd = os.open(location, DIR_FLAGS)
            elif code == _LOCK_DIR:
                if not try_lock(state.dir_fd):
                    raise _errors.held(next_path)
            elif code == _CHECK_NEXT:
                path = next_path
                if exists_at(NEXT_NAME, state.dir_fd):
                    raise _errors.leftover(next_path)
            elif code == _CHECK_REPLACE:
                path = os.path.join(location, CHECKPOINT_NAME)
                if exists_at(CHECKPOINT_NAME, state.dir_fd):
                    raise FileExistsError(
                        errno.EEXIST,
                        "the session is in the replace layout; convert it first",
                        path,
                    )
            elif code == _OPEN_SLOTS:
                if state.slots_fd >= 0:
                    continue
                path = slots_path
                try:
                    state.slots_fd = _open_slots(state.dir_fd)
                except FileNotFoundError:
                    break
            elif code == _CHECK_DIR_LINKED:
                path = location
                if os.fstat(state.dir_fd).st_nlink == 0:
                    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            elif code == _READ_SLOTS:
                path = slots_path
                if state.known and _choose_known(state, len(data)):
                    continue
                view = _read_view(state.slots_fd, slots_path)
                order = newest_first(view.headers)
                valid = _valid_records(state.slots_fd, view, 1)
                newest_is_valid = bool(valid) and valid[0].slot == order[0]
                choice = choose_slot(
                    view.header, view.headers, newest_is_valid, len(data)
                )
                if view.size < view.header.file_size:
                    # Shorter than its header says: damaged, and an in-place
                    # write could land gigabytes past its end. A new file.
                    choice = attrs.evolve(choice, placement=Placement.REBUILD)
                state.view = view
                state.choice = choice
                if choice.placement is Placement.REBUILD:
                    state.previous = (
                        (valid[0].sequence, valid[0].data) if valid else None
                    )
                    break
            elif code == _WRITE_SLOT:
                path = slots_path
                chosen, slot = state.view, state.choice
                if chosen is None or slot is None:
                    raise ValueError(
                        f"slot written before it was chosen in {in_place!r}"
                    )
                head = encode_record_header(slot.sequence, data)
                at = chosen.header.slot_offset(slot.slot)
                _pwrite_all(state.slots_fd, [memoryview(head), memoryview(data)], at)
                state.written = decode_record_header(head, chosen.header.slot_size)
            elif code == _SYNC_SLOT:
                path = slots_path
                try:
                    os.fdatasync(state.slots_fd)
                except OSError as exc:
                    if state.view is not None and state.choice is not None:
                        at = state.view.header.slot_offset(state.choice.slot)
                        _hide_record(state.slots_fd, at, exc)
                    raise
            elif code == _CLOSE_SLOTS:
                if state.slots_fd < 0:
                    continue
                path = slots_path
                fd, state.slots_fd = state.slots_fd, -1
                os.close(fd)
            elif code == _CLOSE_DIR:
                path = location
                fd, state.dir_fd = state.dir_fd, -1
                os.close(fd)
            else:
                raise ValueError(f"unknown slotted save step {code} in {in_place!r}")
        else:
            return True
        path = slots_path
        if state.slots_fd >= 0:
            fd, state.slots_fd = state.slots_fd, -1
            os.close(fd)
    except SlotsFormatError as exc:
        raise CorruptCheckpointError(slots_path, str(exc)) from None
    except (_errors.LockedStorageError, CorruptCheckpointError):
        raise
    except OSError as exc:
        # The calls above name nothing, or a name relative to the directory:
        # the full path replaces it.
        raise OSError(exc.errno, exc.strerror, path) from exc
    _rebuild(state, location, data, rebuild)
    return False


def _open_slots(dir_fd: int) -> int:
    try:
        return os.open(SLOTS_NAME, _SLOTS_FLAGS | _NO_ATIME, dir_fd=dir_fd)
    except PermissionError as exc:
        if not _NO_ATIME or exc.errno != errno.EPERM:
            raise
        return os.open(SLOTS_NAME, _SLOTS_FLAGS, dir_fd=dir_fd)


def _rebuild(
    state: SlotsState,
    location: str,
    data: bytes | bytearray | memoryview,
    rebuild: bytes,
) -> None:
    """Write a whole new slots file through the replace sequence; its errors
    name their paths. A plan that closes the directory takes it over (a
    one-shot save's); a held session's plan borrows it."""
    sequence = state.choice.sequence if state.choice is not None else 1
    previous, state.previous = state.previous, None
    image = build_slots_file(data, sequence, previous)
    dir_fd = state.dir_fd
    if _CLOSE_DIR in rebuild:
        state.dir_fd = -1
    save(location, image, rebuild, NEXT_NAME, SLOTS_NAME, dir_fd=dir_fd)


def _close(slots_fd: int, dir_fd: int) -> None:
    try:
        if slots_fd >= 0:
            os.close(slots_fd)
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)


# How often a load reads the slots again while saves keep changing them.
_READS: Final = 100


def _settled_records(fd: int, path: str, wanted: int) -> list[ValidRecord]:
    """``_valid_records``, read again while concurrent saves change the headers.

    A load takes no lock: two saves during one load may overwrite both slots
    after their headers were read, so neither record read passes its checksum.
    Headers that changed since mean exactly that; unchanged headers with no
    whole record mean a damaged file.
    """
    view = _read_view(fd, path)
    for _ in range(_READS):
        found = _valid_records(fd, view, wanted)
        if found:
            return found
        again = _read_view(fd, path)
        if again == view:
            return found
        view = again
    return []


def load_slots(path: str, previous: bool = False) -> bytes | None:
    """The newest valid record of the slots file at ``path`` (or the one before).

    None for ``previous`` when there is no older valid record. A file with no
    valid record at all raises CorruptCheckpointError: saves never leave one.
    """
    fd = open_regular(path)
    try:
        found = _settled_records(fd, path, 2 if previous else 1)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, path) from exc
    finally:
        os.close(fd)
    if not found:
        raise CorruptCheckpointError(path, "no record passes its checksum")
    if previous:
        return found[1].data if len(found) > 1 else None
    return found[0].data
