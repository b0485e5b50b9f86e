"""What each step of a plan does to the disk: a table from step to effects.

``REPLACE_STEPS`` for the replace layout's save, ``SLOTTED_STEPS`` for the
slotted one, ``CONVERSION_STEPS`` for a layout conversion. Where the program
decides something from what it reads (which slot ``READ_SLOTS`` overwrites,
whether a slotted save turns into a rebuild, which work ``FIND_FILES`` calls
for), the step model reads the disk as the program sees it and decides with the
library's own pure functions; the program then goes on with the steps the
library would run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

import attrs
from disk_model import DIRECTORY, Disk, Effect, Flush, Link, Rename, Unlink, Write

from sessionstore._conversion_plan import (
    ConversionPlan,
    ConversionStep,
    Step,
)
from sessionstore._naming import CHECKPOINT_FILES, CHECKPOINT_NAME, NEXT_NAME
from sessionstore._save_plan import SavePlan, SaveStep
from sessionstore._slots_format import (
    RECORD_HEADER_SIZE,
    FileHeader,
    Placement,
    RecordHeader,
    SlotChoice,
    build_slots_file,
    choose_slot,
    decode_file_header,
    decode_record_header,
    encode_record_header,
    newest_first,
)


@attrs.define
class Execution:
    """The program's side of a save in progress: what a step model reads and changes."""

    plan: SavePlan | ConversionPlan
    """the plan being run, whose names the steps act on"""
    checkpoint: bytes
    """the data being saved"""
    disk: Disk
    """the disk as the program sees it (every issued effect applied)"""
    rebuild: SavePlan | None = None
    """a slotted save's way on when the record cannot be written in place"""
    payload: bytes = attrs.field(
        default=attrs.Factory(lambda run: run.checkpoint, takes_self=True)
    )
    """what ``WRITE_NEXT`` writes: the checkpoint, or a rebuild's whole slots file"""
    handles: dict[str, int] = attrs.Factory(dict)
    """open files by role (``"next"``, ``"slots"``), as inode numbers"""
    record: Write | None = None
    """the slot write ``READ_SLOTS`` decided on"""
    diverted: tuple[Step, ...] | None = None
    """set by a step after which the program goes on with these steps instead"""

    def new_inode(self) -> int:
        number = max([DIRECTORY, *self.disk.inodes]) + 1
        self.disk = self.disk.with_inode(number, b"")
        return number

    def divert_to_rebuild(self, image: bytes) -> None:
        """Go on with the rebuild plan, writing ``image`` as the new slots file."""
        if self.rebuild is None:
            raise ValueError("the save must rebuild the slots file; no plan to do it")
        self.payload = image
        self.plan = self.rebuild
        self.diverted = self.rebuild.steps


StepModel = Callable[[Execution], Sequence[Effect | Flush]]


def _create_next(run: Execution) -> Sequence[Effect | Flush]:
    run.handles["next"] = run.new_inode()
    return [Link(run.plan.next_name, run.handles["next"])]


def _nothing_on_disk(run: Execution) -> Sequence[Effect | Flush]:
    return []


REPLACE_STEPS: Final[Mapping[Step, StepModel]] = {
    SaveStep.OPEN_DIR: _nothing_on_disk,
    SaveStep.LOCK_DIR: _nothing_on_disk,  # rule 6: a lock is memory only
    SaveStep.CREATE_NEXT: _create_next,
    SaveStep.WRITE_NEXT: lambda run: [Write(run.handles["next"], 0, run.payload)],
    SaveStep.FSYNC_NEXT: lambda run: [Flush(run.handles["next"])],
    SaveStep.CLOSE_NEXT: _nothing_on_disk,
    SaveStep.RENAME_NEXT: lambda run: [
        Rename(run.plan.next_name, run.plan.target_name, run.handles["next"])
    ],
    SaveStep.FSYNC_DIR: lambda run: [Flush(DIRECTORY)],
    SaveStep.CLOSE_DIR: _nothing_on_disk,
}
"""The on-disk effects of the steps of the replace-by-rename save."""


def _must_be_absent(name: str) -> StepModel:
    """A check the save would fail (a leftover lock, the other layout's file)."""

    def model(run: Execution) -> Sequence[Effect | Flush]:
        if name in run.disk.entries:
            raise ValueError(f"the save would stop: {name} exists")
        return []

    return model


def _open_slots(run: Execution) -> Sequence[Effect | Flush]:
    inode = run.disk.entries.get(run.plan.target_name)
    if inode is None:
        run.divert_to_rebuild(build_slots_file(run.checkpoint, 1, None))
    else:
        run.handles["slots"] = inode
    return []


@attrs.frozen
class WholeRecord:
    slot: int
    sequence: int
    data: bytes


def read_records(
    image: bytes,
) -> tuple[FileHeader, tuple[RecordHeader | None, ...], list[WholeRecord]]:
    """A slots file as a save reads it: geometry, record headers, whole records.

    The whole records come newest first; a record whose checksum fails is not
    among them.
    """
    header = decode_file_header(image)
    headers = tuple(
        decode_record_header(image[header.slot_offset(slot) :], header.slot_size)
        for slot in (0, 1)
    )
    whole = []
    for slot in newest_first((headers[0], headers[1])):
        record = headers[slot]
        assert record is not None
        start = header.slot_offset(slot) + RECORD_HEADER_SIZE
        data = image[start : start + record.length]
        if len(data) == record.length and record.crc_matches(data):
            whole.append(WholeRecord(slot, record.sequence, data))
    return header, headers, whole


SlotChooser = Callable[
    [FileHeader, tuple[RecordHeader | None, RecordHeader | None], bool, int],
    SlotChoice,
]


def read_slots(choose: SlotChooser) -> StepModel:
    """``READ_SLOTS``: decide, from what the program reads, where the record goes.

    ``choose`` is the library's ``choose_slot``, or a broken one for the tests
    that show the explorer catches a wrong choice.
    """

    def model(run: Execution) -> Sequence[Effect | Flush]:
        slots = run.handles["slots"]
        header, read, whole = read_records(run.disk.inodes[slots])
        headers = (read[0], read[1])
        order = newest_first(headers)
        newest_is_valid = bool(whole) and whole[0].slot == order[0]
        choice = choose(header, headers, newest_is_valid, len(run.checkpoint))
        if choice.placement is Placement.REBUILD:
            previous = (whole[0].sequence, whole[0].data) if whole else None
            run.divert_to_rebuild(
                build_slots_file(run.checkpoint, choice.sequence, previous)
            )
        else:
            record = encode_record_header(choice.sequence, run.checkpoint)
            at = header.slot_offset(choice.slot)
            run.record = Write(slots, at, record + run.checkpoint)
        return []

    return model


def _write_slot(run: Execution) -> Sequence[Effect | Flush]:
    if run.record is None:
        raise ValueError("WRITE_SLOT before READ_SLOTS chose a slot")
    return [run.record]


def slotted_steps(choose: SlotChooser = choose_slot) -> Mapping[Step, StepModel]:
    """The on-disk effects of the slotted save's steps (the rebuild's included)."""
    return {
        **REPLACE_STEPS,
        SaveStep.CHECK_NEXT: _must_be_absent(NEXT_NAME),
        SaveStep.CHECK_REPLACE: _must_be_absent(CHECKPOINT_NAME),
        SaveStep.OPEN_SLOTS: _open_slots,
        SaveStep.READ_SLOTS: read_slots(choose),
        SaveStep.WRITE_SLOT: _write_slot,
        SaveStep.SYNC_SLOT: lambda run: [Flush(run.handles["slots"])],
        SaveStep.CLOSE_SLOTS: _nothing_on_disk,
        SaveStep.CHECK_DIR_LINKED: _nothing_on_disk,
    }


SLOTTED_STEPS: Final = slotted_steps()


def _conversion(run: Execution) -> ConversionPlan:
    if not isinstance(run.plan, ConversionPlan):
        raise ValueError(f"a conversion's step in {run.plan}")
    return run.plan


def _find_files(run: Execution) -> Sequence[Effect | Flush]:
    """``FIND_FILES``: the conversion goes on with the work what it finds calls for."""
    plan = _conversion(run)
    found = {name for name in CHECKPOINT_FILES if name in run.disk.entries}
    run.diverted = plan.unfold(plan.work(found) + plan.release)
    return []


def _read_old(run: Execution) -> Sequence[Effect | Flush]:
    """``READ_OLD`` reads the checkpoint; the copy writes it in the new layout."""
    run.payload = _conversion(run).copied(run.checkpoint)
    return []


CONVERSION_STEPS: Final[Mapping[Step, StepModel]] = {
    **REPLACE_STEPS,
    SaveStep.CHECK_NEXT: _must_be_absent(NEXT_NAME),
    ConversionStep.FIND_FILES: _find_files,
    ConversionStep.READ_OLD: _read_old,
    ConversionStep.DUP_DIR: _nothing_on_disk,
    ConversionStep.REMOVE_OLD: lambda run: [Unlink(_conversion(run).old_name)],
}
"""The on-disk effects of a conversion's steps."""
