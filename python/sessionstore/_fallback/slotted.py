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
    SlotsFormatError,
    build_slots_file,
    choose_slot,
    decode_file_header,
    decode_record_header,
    encode_record_header,
    newest_first,
)
from .posix import NO_PROGRESS, exists_at, open_regular
from .save import REPLACE_STEPS, SaveState, Steps, run

# Never through a symlink: that would write into whatever file it names.
_SLOTS_FLAGS: Final = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
# A save reads the slots before it writes one; with the access time left alone,
# that read changes no metadata (each access time update is a journal entry,
# about a sixth of the one flush's cost on ext4). Only the file's owner may ask
# for it: anyone else opens without it (EPERM, then a second open).
_NO_ATIME: Final = getattr(os, "O_NOATIME", 0)


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


def read_view(fd: int, path: str) -> SlotsView:
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
            raise OSError(errno.EIO, NO_PROGRESS)
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


def save_slotted(
    location: str,
    data: bytes | bytearray | memoryview,
    in_place: bytes,
    rebuild: bytes,
) -> None:
    """Execute a slotted save plan: ``in_place``, or ``rebuild`` when it must."""
    state = SaveState(location, NEXT_NAME, SLOTS_NAME)
    try:
        run_slotted(state, data, in_place, rebuild)
    finally:
        # A well-formed plan closed both; a plan that did not must not leak them.
        state.close()


def run_slotted(
    state: SaveState,
    data: bytes | bytearray | memoryview,
    in_place: bytes,
    rebuild: bytes,
) -> None:
    """Execute the plan on ``state``, which a held session keeps between saves:
    ``in_place``, then ``rebuild`` when a step found it due.

    Closes nothing on failure: ``save_slotted``, or the held session's
    release, does. After a failure the state no longer claims to know the
    slots, so the next save reads them.
    """
    state.choice = None
    state.written = None
    state.data = data
    in_place_done = False
    try:
        in_place_done = run(state, in_place, STEPS)
        if not in_place_done:
            run(state, _CLOSE_SLOTS, STEPS)
            _rebuild(state, data, rebuild)
    finally:
        # A held state must not keep the checkpoint alive between saves.
        state.data = b""
        view, choice, written = state.view, state.choice, state.written
        if in_place_done and view and choice and written:
            headers = list(view.headers)
            headers[choice.slot] = written
            state.view = SlotsView(view.header, (headers[0], headers[1]), view.size)
            state.known = True
        else:
            state.view = None
            state.known = False


_CLOSE_SLOTS: Final = bytes([SaveStep.CLOSE_SLOTS])


def _rebuild(
    state: SaveState, data: bytes | bytearray | memoryview, rebuild: bytes
) -> None:
    """Write a whole new slots file through the replace sequence, on the
    directory the in-place steps opened and locked."""
    sequence = state.choice.sequence if state.choice is not None else 1
    previous, state.previous = state.previous, None
    state.data = build_slots_file(data, sequence, previous)
    run(state, rebuild, REPLACE_STEPS)


def _choose_known(state: SaveState) -> bool:
    """Choose the slot from what a held session knows, without reading: False
    when the record does not fit, as a rebuild needs the newest record's data."""
    view = state.view
    if view is None:
        return False
    choice = choose_slot(view.header, view.headers, True, len(state.data))
    if choice.placement is Placement.REBUILD:
        return False
    state.choice = choice
    return True


def _check_next(state: SaveState) -> bool:
    if exists_at(NEXT_NAME, state.dir_fd):
        raise _errors.leftover(state.path(NEXT_NAME))
    return True


def _check_replace(state: SaveState) -> bool:
    if exists_at(CHECKPOINT_NAME, state.dir_fd):
        raise FileExistsError(
            errno.EEXIST, "the session is in the replace layout; convert it first"
        )
    return True


def _open_slots(state: SaveState) -> bool:
    """Open the slots file unless it is open; False (a rebuild) when missing."""
    if state.slots_fd >= 0:
        return True
    try:
        state.slots_fd = _open_slots_file(state.dir_fd)
    except FileNotFoundError:
        return False
    return True


def _open_slots_file(dir_fd: int) -> int:
    try:
        return os.open(SLOTS_NAME, _SLOTS_FLAGS | _NO_ATIME, dir_fd=dir_fd)
    except PermissionError as exc:
        if not _NO_ATIME or exc.errno != errno.EPERM:
            raise
        return os.open(SLOTS_NAME, _SLOTS_FLAGS, dir_fd=dir_fd)


def _check_dir_linked(state: SaveState) -> bool:
    if os.fstat(state.dir_fd).st_nlink == 0:
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    return True


def _read_slots(state: SaveState) -> bool:
    """Choose the slot; False when the save must rebuild the file instead."""
    if state.known and _choose_known(state):
        return True
    view = read_view(state.slots_fd, state.path(SLOTS_NAME))
    order = newest_first(view.headers)
    valid = _valid_records(state.slots_fd, view, 1)
    newest_is_valid = bool(valid) and valid[0].slot == order[0]
    choice = choose_slot(view.header, view.headers, newest_is_valid, len(state.data))
    if view.size < view.header.file_size:
        # Shorter than its header says: damaged, and an in-place write could
        # land gigabytes past its end. A new file.
        choice = attrs.evolve(choice, placement=Placement.REBUILD)
    state.view = view
    state.choice = choice
    if choice.placement is Placement.REBUILD:
        state.previous = (valid[0].sequence, valid[0].data) if valid else None
        return False
    return True


def _write_slot(state: SaveState) -> bool:
    view, choice = state.view, state.choice
    if view is None or choice is None:
        raise ValueError(f"slot written before it was chosen in {state.codes!r}")
    data = state.data
    head = encode_record_header(choice.sequence, data)
    at = view.header.slot_offset(choice.slot)
    _pwrite_all(state.slots_fd, [memoryview(head), memoryview(data)], at)
    state.written = decode_record_header(head, view.header.slot_size)
    return True


def _sync_slot(state: SaveState) -> bool:
    try:
        os.fdatasync(state.slots_fd)
    except OSError as exc:
        if state.view is not None and state.choice is not None:
            at = state.view.header.slot_offset(state.choice.slot)
            _hide_record(state.slots_fd, at, exc)
        raise
    return True


def _close_slots(state: SaveState) -> bool:
    if state.slots_fd >= 0:
        fd, state.slots_fd = state.slots_fd, -1
        os.close(fd)
    return True


STEPS: Final = Steps(
    {
        **{SaveStep(code): step for code, step in REPLACE_STEPS.functions.items()},
        SaveStep.CHECK_NEXT: _check_next,
        SaveStep.CHECK_REPLACE: _check_replace,
        SaveStep.OPEN_SLOTS: _open_slots,
        SaveStep.CHECK_DIR_LINKED: _check_dir_linked,
        SaveStep.READ_SLOTS: _read_slots,
        SaveStep.WRITE_SLOT: _write_slot,
        SaveStep.SYNC_SLOT: _sync_slot,
        SaveStep.CLOSE_SLOTS: _close_slots,
    },
    "unknown slotted save step {code} in {codes!r}",
)
"""Every step code: the replace sequence's and the slotted layout's."""


# How often a load reads the slots again while saves keep changing them.
_READS: Final = 100


def _settled_records(fd: int, path: str, wanted: int) -> list[ValidRecord]:
    """``_valid_records``, read again while concurrent saves change the headers.

    A load takes no lock: two saves during one load may overwrite both slots
    after their headers were read, so neither record read passes its checksum.
    Headers that changed since mean exactly that; unchanged headers with no
    whole record mean a damaged file.
    """
    view = read_view(fd, path)
    for _ in range(_READS):
        found = _valid_records(fd, view, wanted)
        if found:
            return found
        again = read_view(fd, path)
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
