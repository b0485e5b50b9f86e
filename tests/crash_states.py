"""Every state a power cut during a save can leave on disk, and recovery from each.

The explorer runs a save plan (``plan_save()``, or ``plan_slotted_save()``) step
by step on a model of one session directory, cuts the power after every step,
enumerates every state the disk may then hold, writes each into a real directory
and checks that the real library recovers from it: ``load_checkpoint()`` gives
the old checkpoint or the new one, in full (only the new one once the save has
returned); ``load_previous()`` gives None in the replace layout and, in the
slotted one, the old checkpoint when the new one loads, else the one before the
old one or None, never anything torn; ``lock_state()`` is UNLOCKED, or STALE
exactly when ``session.next`` is there; after ``break_stale_lock()`` a save
works (and, slotted, keeps what was recovered as the previous generation).

It explores ``convert_layout()`` the same way, running the plan the library
runs (``plan_conversion()``: the replace steps copying the checkpoint into the
new layout's file, then the unlink of the old one and a directory flush),
with the work the plan chooses from the files it finds: at every cut the same
checkpoint loads, whole; once the conversion has returned only the new
layout's file is left; calling ``convert_layout()`` again (after
``break_stale_lock()``) finishes the job.

Persistence model
-----------------
Conservative: it assumes less of a filesystem than ext4, xfs or btrfs promise.

1. State. One directory maps names to inodes; an inode holds bytes. The model
   keeps what the program sees and, apart, what is durable: sure to be on disk.
2. Effects. A step issues effects: entry effects on the directory (link a new
   inode under a name, rename, unlink) and data effects on an inode (write
   bytes at an offset, which may extend the file).
3. Barriers. A flush (``fsync``/``fdatasync`` of a file, ``fsync`` of the
   directory) that has returned makes every effect issued before it on that one
   object durable: a file's flush its data and size, the directory's flush its
   entries. Nothing else orders anything: a file's flush does not make its name
   durable, the directory's flush does not make the data of the files it names
   durable, and a flush that was still running when the power went off counts
   for nothing.
4. A power cut leaves the durable state plus any subset of the effects that
   were issued but are not yet durable, each chosen independently; those that
   land take effect in the order they were issued (a journal replays in order).
   In particular a rename may land while the data of the file it names does not.
5. Atomicity. An entry effect lands whole or not at all; a rename leaves its
   target naming the old inode or the renamed one, never nothing, but its source
   name may survive as a second link to the renamed inode. A data effect tears
   at 512-byte sectors: each sector it covers lands or not, a sector that did not
   land reads as what was durable there (zeros past the durable end of the file),
   and a write that extended the file leaves the old size or the new one.
6. Locks (``flock``) live in memory: no power cut leaves one held.
7. The session directory itself is durable before the save starts
   (``SessionStorage.create`` flushes its parent).
8. Overwriting in place (the slotted layout). ``fdatasync`` is a file flush as
   in rule 3: it makes the file's data durable (and its size, were it changed),
   leaving out only timestamps, which nothing reads. A write over bytes that
   were durably written before tears as in rule 5, each sector reading as the
   durable old bytes or the new ones: the slots file's blocks are allocated and
   written when the file is made (zeros included), so an in-place write needs no
   allocation, no size change and no other metadata to be read back.

A step that was running when the power went off has issued its effects (all,
none or a torn part of them, which rule 5 covers) and has not completed its
barrier, so cutting after every step, with a step's barrier complete only from
the cut after it on, enumerates every state of a cut at any moment.

What each step does to the disk is a table from ``SaveStep`` to effects:
``REPLACE_STEPS`` for the replace layout, ``SLOTTED_STEPS`` for the slotted one,
whose ``WRITE_SLOT`` is a ``Write`` of record header and data at the chosen
slot's offset and ``SYNC_SLOT`` a ``Flush`` of the slots file. Where the program
decides something from what it reads (which slot ``READ_SLOTS`` overwrites,
whether ``OPEN_SLOTS`` or ``READ_SLOTS`` turns the save into a rebuild), the
step model reads the disk as the program sees it and decides with the
library's own pure functions (``choose_slot``, ``build_slots_file``); a rebuild
then goes on with the plan's rebuild steps, the replace sequence writing a whole
new ``session.slots``. A write may change at most ``MAX_TORN_SECTORS`` sectors
(sectors it overwrites with the bytes they already hold read the same whether
they land or not, and are not enumerated), so that tearing is enumerated
exhaustively rather than sampled.
"""

from __future__ import annotations

import enum
import itertools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

import attrs

from sessionstore import Layout, LockState, SessionStorage
from sessionstore._conversion_plan import (
    FILE_OF,
    SURVEYED,
    ConversionPlan,
    ConversionStep,
    Step,
)
from sessionstore._naming import CHECKPOINT_NAME, NEXT_NAME
from sessionstore._save_plan import SavePlan, SaveStep, SlottedPlan
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

# The unit a disk writes atomically: a write is torn at these boundaries only.
SECTOR: Final = 512
# Past this many sectors per write, exhaustive tearing (2**n states) gets slow.
MAX_TORN_SECTORS: Final = 8
# The object a directory flush makes durable; inodes are numbered from 1.
DIRECTORY: Final = 0


@attrs.frozen
class Disk:
    """Names in the session directory and the bytes of each inode."""

    entries: Mapping[str, int]
    inodes: Mapping[int, bytes]

    @classmethod
    def read(cls, directory: Path) -> Disk:
        """The disk as a real directory holds it (hard links share an inode)."""
        entries: dict[str, int] = {}
        inodes: dict[int, bytes] = {}
        numbers: dict[int, int] = {}
        for path in sorted(directory.iterdir()):
            number = numbers.setdefault(path.stat().st_ino, len(numbers) + 1)
            entries[path.name] = number
            inodes[number] = path.read_bytes()
        return cls(entries, inodes)

    def with_entries(self, entries: Mapping[str, int]) -> Disk:
        return attrs.evolve(self, entries=dict(entries))

    def with_inode(self, inode: int, data: bytes) -> Disk:
        return attrs.evolve(self, inodes={**self.inodes, inode: data})


# -- effects --------------------------------------------------------------------

# How one effect may have landed: a label for reports and the disk it leaves.
Landing = tuple[str, Disk]


@attrs.frozen
class Link:
    """A new inode gets a name (``openat`` with ``O_CREAT``)."""

    name: str
    inode: int
    target: int = attrs.field(default=DIRECTORY, repr=False)

    def apply(self, disk: Disk) -> Disk:
        linked = disk.with_entries({**disk.entries, self.name: self.inode})
        if self.inode in disk.inodes:
            return linked
        return linked.with_inode(self.inode, b"")

    def landings(self, disk: Disk) -> list[Landing]:
        return [(f"{self} lost", disk), (f"{self} landed", self.apply(disk))]


@attrs.frozen
class Rename:
    """``source`` is renamed over ``destination``; it named ``inode`` when issued."""

    source: str
    destination: str
    inode: int
    target: int = attrs.field(default=DIRECTORY, repr=False)

    def apply(self, disk: Disk, *, keep_source: bool = False) -> Disk:
        entries = {**disk.entries, self.destination: self.inode}
        if not keep_source and entries.get(self.source) == self.inode:
            del entries[self.source]
        return disk.with_entries(entries)

    def landings(self, disk: Disk) -> list[Landing]:
        return [
            (f"{self} lost", disk),
            (f"{self} landed", self.apply(disk)),
            (f"{self} landed, source kept", self.apply(disk, keep_source=True)),
        ]


@attrs.frozen
class Write:
    """``data`` written into ``inode`` at ``offset``."""

    inode: int
    offset: int
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")

    @property
    def target(self) -> int:
        return self.inode

    @property
    def end(self) -> int:
        return self.offset + len(self.data)

    def apply(self, disk: Disk) -> Disk:
        return self._land(disk, self._sectors(), extend=True)

    def _sectors(self) -> range:
        if not self.data:
            return range(0)
        return range(self.offset // SECTOR, (self.end - 1) // SECTOR + 1)

    def _land(self, disk: Disk, sectors: Sequence[int], *, extend: bool) -> Disk:
        old = disk.inodes.get(self.inode, b"")
        content = bytearray(old.ljust(max(len(old), self.end), b"\0"))
        for sector in sectors:
            start = max(sector * SECTOR, self.offset)
            stop = min((sector + 1) * SECTOR, self.end)
            content[start:stop] = self.data[start - self.offset : stop - self.offset]
        size = max(len(old), self.end) if extend else len(old)
        return disk.with_inode(self.inode, bytes(content[:size]))

    def _changed(self, disk: Disk) -> list[int]:
        """The sectors whose bytes the write changes; the others land alike or not."""
        old = disk.inodes.get(self.inode, b"").ljust(self.end, b"\0")
        changed = []
        for sector in self._sectors():
            start = max(sector * SECTOR, self.offset)
            stop = min((sector + 1) * SECTOR, self.end)
            if old[start:stop] != self.data[start - self.offset : stop - self.offset]:
                changed.append(sector)
        return changed

    def landings(self, disk: Disk) -> list[Landing]:
        sectors = self._changed(disk)
        if len(sectors) > MAX_TORN_SECTORS:
            raise ValueError(
                f"{self} changes {len(sectors)} sectors; keep explored writes within "
                f"{MAX_TORN_SECTORS} so that tearing is enumerated exhaustively"
            )
        extends = self.end > len(disk.inodes.get(self.inode, b""))
        result = []
        for mask in itertools.product((False, True), repeat=len(sectors)):
            landed = [s for s, keep in zip(sectors, mask, strict=True) if keep]
            for extend in (False, True) if extends else (False,):
                size = "new" if extend else "old"
                label = f"{self}: sectors {landed} landed, size {size}"
                result.append((label, self._land(disk, landed, extend=extend)))
        return result


@attrs.frozen
class Unlink:
    """``name`` is removed from the directory."""

    name: str
    target: int = attrs.field(default=DIRECTORY, repr=False)

    def apply(self, disk: Disk) -> Disk:
        return disk.with_entries(
            {n: i for n, i in disk.entries.items() if n != self.name}
        )

    def landings(self, disk: Disk) -> list[Landing]:
        return [(f"{self} lost", disk), (f"{self} landed", self.apply(disk))]


Effect = Link | Rename | Write | Unlink


@attrs.frozen
class Flush:
    """A barrier: once it returns, every earlier effect on ``target`` is durable."""

    target: int


# -- what each step does ----------------------------------------------------------


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
    found = {name for name in SURVEYED if name in run.disk.entries}
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


# -- enumerating crash states ---------------------------------------------------


@attrs.frozen
class CrashState:
    """One state of the session directory after a power cut.

    ``files`` is what each name reads as; ``links`` groups names that are one
    inode. ``returned`` says whether the save had returned before the cut;
    ``cut`` and ``landed`` say how the state came about, for reports.
    """

    files: tuple[tuple[str, bytes], ...]
    links: tuple[tuple[str, ...], ...]
    returned: bool
    cut: str = attrs.field(eq=False)
    landed: tuple[str, ...] = attrs.field(eq=False)

    @classmethod
    def of(
        cls, disk: Disk, *, returned: bool, cut: str, landed: Sequence[str]
    ) -> CrashState:
        names_of: dict[int, list[str]] = {}
        for name, inode in sorted(disk.entries.items()):
            names_of.setdefault(inode, []).append(name)
        return cls(
            files=tuple(sorted((n, disk.inodes[i]) for n, i in disk.entries.items())),
            links=tuple(
                sorted(tuple(names) for names in names_of.values() if len(names) > 1)
            ),
            returned=returned,
            cut=cut,
            landed=tuple(landed),
        )

    def content(self, name: str) -> bytes | None:
        return dict(self.files).get(name)

    def materialize(self, directory: Path) -> None:
        """Write this state into ``directory``, a new directory."""
        directory.mkdir(mode=0o700)
        linked = {name: group[0] for group in self.links for name in group[1:]}
        for name, data in self.files:
            if name not in linked:
                (directory / name).write_bytes(data)
        for name, first in linked.items():
            os.link(directory / first, directory / name)

    def __str__(self) -> str:
        files = ", ".join(f"{n}: {len(d)} bytes" for n, d in self.files) or "empty"
        links = f", linked {self.links}" if self.links else ""
        landed = "; ".join(self.landed) or "nothing pending"
        return f"cut {self.cut}: {files}{links} [{landed}]"


def _landings(
    pending: Sequence[Effect], disk: Disk
) -> Iterator[tuple[Disk, list[str]]]:
    """Every disk the pending effects may leave, in issue order (rules 4 and 5)."""
    if not pending:
        yield disk, []
        return
    first, rest = pending[0], pending[1:]
    for label, landed in first.landings(disk):
        for final, labels in _landings(rest, landed):
            yield final, [label, *labels]


def explore(
    plan: SavePlan | SlottedPlan | ConversionPlan,
    before: Disk,
    checkpoint: bytes,
    steps: Mapping[Step, StepModel] | None = None,
) -> list[CrashState]:
    """Every distinct state a power cut at any moment of ``plan`` can leave.

    ``before`` is the durable disk when the save starts; ``checkpoint`` is what
    is saved. A slotted plan runs its in-place steps and, where the program
    would (no slots file, or a record that does not fit), goes on with its
    rebuild steps. A conversion runs its survey, then the work what it finds
    calls for; ``checkpoint`` is what its ``READ_OLD`` reads from the old
    layout's file. ``steps`` defaults to the table of the plan's kind. States
    that look alike on disk and agree on whether the save had returned are
    reported once.
    """
    first: SavePlan | ConversionPlan
    start: tuple[Step, ...]
    every: tuple[Step, ...]
    if isinstance(plan, SlottedPlan):
        first, rebuild = plan.in_place, plan.rebuild
        table = SLOTTED_STEPS if steps is None else steps
        start, every = first.steps, first.steps + rebuild.steps
    elif isinstance(plan, ConversionPlan):
        first, rebuild = plan, None
        table = CONVERSION_STEPS if steps is None else steps
        start, every = plan.unfold(plan.survey), plan.steps
    else:
        first, rebuild = plan, None
        table = REPLACE_STEPS if steps is None else steps
        start, every = plan.steps, plan.steps
    unknown = [step for step in dict.fromkeys(every) if step not in table]
    if unknown:
        raise ValueError(f"no model of the on-disk effects of {unknown}")
    run = Execution(first, checkpoint, before, rebuild)
    durable = before
    pending: list[Effect] = []
    found: dict[CrashState, None] = {}

    def cut(label: str, *, returned: bool) -> None:
        for disk, labels in _landings(pending, durable):
            state = CrashState.of(disk, returned=returned, cut=label, landed=labels)
            found.setdefault(state)

    cut("before the save", returned=False)
    queue = list(start)
    while queue:
        step = queue.pop(0)
        for effect in table[step](run):
            if isinstance(effect, Flush):
                durable = _flush(durable, pending, effect.target)
                pending = [e for e in pending if e.target != effect.target]
            else:
                pending.append(effect)
                run.disk = effect.apply(run.disk)
        if run.diverted is not None:
            queue, run.diverted = list(run.diverted), None
        cut(f"after {step.name}", returned=not queue)
    return list(found)


def _flush(durable: Disk, pending: Sequence[Effect], target: int) -> Disk:
    for effect in pending:
        if effect.target == target:
            durable = effect.apply(durable)
    return durable


# -- checking recovery with the real library ------------------------------------------


class Problem(enum.Enum):
    """What a crash state did wrong."""

    TORN = "load gives neither the old nor the new checkpoint in full"
    LOST = "the save had returned, yet the old checkpoint loads"
    PREVIOUS = (
        "load_previous() gives neither the generation before the loaded one nor None"
    )
    LOCK = "the lock state is not UNLOCKED, or STALE exactly when session.next is left"
    STUCK = "after break_stale_lock() a save (or conversion) fails or loses something"
    UNFINISHED = "the conversion had returned, yet the old layout's file is left"


@attrs.frozen
class Violation:
    state: CrashState
    problem: Problem
    detail: str

    def __str__(self) -> str:
        return f"{self.problem.name}: {self.detail}\n    in {self.state}"


def check(
    state: CrashState,
    directory: Path,
    *,
    old: bytes,
    new: bytes,
    layout: Layout = Layout.REPLACE,
    older: bytes | None = None,
) -> list[Violation]:
    """Materialize ``state`` in ``directory`` and recover from it with the library.

    ``old`` is the checkpoint before the save (``b""``: none), ``new`` the one
    it saves. In the slotted layout ``older`` is what ``load_previous()`` gave
    before the save: with ``new`` loaded it must give ``old``, with ``old``
    loaded ``older`` or None (the save may have torn the slot that held it).
    """
    state.materialize(directory)
    storage = SessionStorage(directory, layout=layout)
    found: list[Violation] = []
    loaded: bytes | None = None
    try:
        loaded = storage.load_checkpoint()
    except (OSError, ValueError) as exc:
        found.append(Violation(state, Problem.TORN, f"load raised {exc!r}"))
    if loaded is not None and loaded != new and (state.returned or loaded != old):
        problem = Problem.LOST if loaded == old else Problem.TORN
        found.append(Violation(state, problem, f"loaded {len(loaded)} bytes"))
    found += _check_previous(state, storage, loaded, old=old, new=new, older=older)
    found += _check_lock(state, storage)
    after = b"the save after recovery"
    try:
        storage.save_checkpoint(after)
        again = storage.load_checkpoint()
        previous = storage.load_previous()
    except (OSError, ValueError) as exc:
        found.append(Violation(state, Problem.STUCK, repr(exc)))
        return found
    if again != after:
        found.append(Violation(state, Problem.STUCK, f"then loaded {len(again)} bytes"))
    # The save after recovery keeps what recovery loaded as its previous one.
    kept = (loaded or None) if layout is Layout.SLOTTED else None
    if previous != kept:
        found.append(
            Violation(state, Problem.STUCK, f"then previous {_size(previous)}")
        )
    return found


def _check_lock(state: CrashState, storage: SessionStorage) -> list[Violation]:
    """The lock is STALE exactly when session.next is left; then it breaks."""
    found = []
    leftover = state.content(NEXT_NAME) is not None
    lock = storage.lock_state()
    if lock is not (LockState.STALE if leftover else LockState.UNLOCKED):
        found.append(Violation(state, Problem.LOCK, f"lock_state() is {lock}"))
    broke = storage.break_stale_lock()
    if broke is not leftover:
        found.append(Violation(state, Problem.LOCK, f"break_stale_lock() gave {broke}"))
    return found


def check_conversion(
    state: CrashState, directory: Path, *, checkpoint: bytes, layout: Layout
) -> list[Violation]:
    """Recover from a state a conversion to ``layout`` left, with the library.

    Whatever the cut, ``checkpoint`` loads, whole; once the conversion had
    returned, only ``layout``'s file is there; the lock is as in a save; and
    calling ``convert_layout(layout)`` again (after ``break_stale_lock()``)
    leaves only ``layout``'s file, holding ``checkpoint``.
    """
    state.materialize(directory)
    storage = SessionStorage(directory, layout=layout)
    found: list[Violation] = []
    try:
        loaded = storage.load_checkpoint()
    except (OSError, ValueError) as exc:
        found.append(Violation(state, Problem.TORN, f"load raised {exc!r}"))
    else:
        if loaded != checkpoint:
            found.append(Violation(state, Problem.TORN, f"loaded {len(loaded)} bytes"))
    names = sorted(name for name, _ in state.files)
    if state.returned and names != [FILE_OF[layout]]:
        found.append(Violation(state, Problem.UNFINISHED, f"left {names}"))
    found += _check_lock(state, storage)
    try:
        storage.convert_layout(layout)
        again = storage.load_checkpoint()
    except (OSError, ValueError) as exc:
        found.append(Violation(state, Problem.STUCK, f"converting again: {exc!r}"))
        return found
    left = sorted(os.listdir(directory))
    if left != [FILE_OF[layout]] or again != checkpoint:
        detail = f"converting again left {left}, loading {len(again)} bytes"
        found.append(Violation(state, Problem.STUCK, detail))
    return found


def check_conversions(
    states: Sequence[CrashState], workdir: Path, *, checkpoint: bytes, layout: Layout
) -> list[Violation]:
    """``check_conversion`` on every state, each in its own directory."""
    workdir.mkdir(exist_ok=True)
    found: list[Violation] = []
    for number, state in enumerate(states):
        directory = workdir / f"state-{number}.session"
        found += check_conversion(
            state, directory, checkpoint=checkpoint, layout=layout
        )
    return found


def _size(data: bytes | None) -> str:
    return "None" if data is None else f"{len(data)} bytes"


def _check_previous(
    state: CrashState,
    storage: SessionStorage,
    loaded: bytes | None,
    *,
    old: bytes,
    new: bytes,
    older: bytes | None,
) -> list[Violation]:
    try:
        previous = storage.load_previous()
    except (OSError, ValueError) as exc:
        return [Violation(state, Problem.PREVIOUS, f"load_previous raised {exc!r}")]
    if storage.layout is Layout.REPLACE:
        allowed: set[bytes | None] = {None}
    elif loaded == new:
        allowed = {old or None}
    elif loaded == old:
        allowed = {older, None}
    else:
        return []  # load already failed: nothing to say the previous one follows
    if previous in allowed:
        return []
    return [Violation(state, Problem.PREVIOUS, f"gave {_size(previous)}")]


def check_all(
    states: Sequence[CrashState],
    workdir: Path,
    *,
    old: bytes,
    new: bytes,
    layout: Layout = Layout.REPLACE,
    older: bytes | None = None,
) -> list[Violation]:
    """Check every state, each in its own directory under ``workdir``."""
    workdir.mkdir(exist_ok=True)
    found: list[Violation] = []
    for number, state in enumerate(states):
        directory = workdir / f"state-{number}.session"
        found += check(state, directory, old=old, new=new, layout=layout, older=older)
    return found
