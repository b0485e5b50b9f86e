"""The save sequence as data.

Both writer backends execute a plan step by step, the crash-state explorer models
the same steps, and the syscall conformance test compares traces against them:
one description of the sequence, read by everything that depends on it.
"""

from __future__ import annotations

import enum
import functools
from typing import Final

import attrs

from ._naming import CHECKPOINT_NAME, NEXT_NAME, SLOTS_NAME
from ._options import Durability, Layout


class SaveStep(enum.IntEnum):
    """One step of a save; the values are the codes the backends execute."""

    OPEN_DIR = 1
    """open the session directory ``O_DIRECTORY|O_CLOEXEC|O_NOFOLLOW``"""
    LOCK_DIR = 2
    """``flock(dir, LOCK_EX|LOCK_NB)``; busy means a live writer"""
    CREATE_NEXT = 3
    """``openat(dir, next, O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0o600)``"""
    WRITE_NEXT = 4
    """write every byte, looping over short writes and EINTR"""
    FSYNC_NEXT = 5
    """``fsync(next)``: the data is durable before it gets its name"""
    CLOSE_NEXT = 6
    """``close(next)``, checked"""
    RENAME_NEXT = 7
    """``renameat(dir, next, dir, target)``: the atomic switch"""
    FSYNC_DIR = 8
    """``fsync(dir)``: the new name is durable"""
    CLOSE_DIR = 9
    """close the directory, which releases the lock"""
    CHECK_NEXT = 10
    """``fstatat(dir, next)``: a leftover next file locks a slotted session too"""
    CHECK_REPLACE = 11
    """``fstatat(dir, session)``: a session in the replace layout is not overwritten"""
    OPEN_SLOTS = 12
    """``openat(dir, session.slots, O_RDWR|O_NOATIME|O_CLOEXEC)``; missing means
    rebuild; EPERM (not the owner, who alone may ask for O_NOATIME) opens again
    without O_NOATIME. Nothing when the file is open already (a held session)"""
    READ_SLOTS = 13
    """``lseek`` to the end (a record claimed past it is damage, never read), then
    ``pread`` the headers and the newest record; choose the slot or a rebuild.
    Nothing but the choice when the writer knows the slots from its own last
    save (a held session: nobody else writes while it holds the lock)"""
    WRITE_SLOT = 14
    """``pwritev`` the record header and data over the chosen slot"""
    SYNC_SLOT = 15
    """``fdatasync(slots)``: the one flush of a durable in-place save"""
    CLOSE_SLOTS = 16
    """``close(slots)``, checked; nothing when it is not open"""
    CHECK_DIR_LINKED = 17
    """``fstat(dir)``: a held session whose directory was removed since
    (``remove()``: no links left) fails the save with FileNotFoundError naming
    the location, rather than flushing a file nobody can load. The directory,
    not the slots file: on kernels with fine-grained timestamps (Linux 6.13+),
    asking for a file's times makes its next write update them, a journaled
    change that cost about half a flush per save here"""


@attrs.frozen
class SavePlan:
    """The ordered steps of one save and the names they act on.

    ``codes`` is the same sequence as bytes, the form the native backend takes
    without converting anything per call.
    """

    steps: tuple[SaveStep, ...]
    next_name: str = NEXT_NAME
    target_name: str = CHECKPOINT_NAME
    codes: bytes = attrs.field(
        init=False,
        default=attrs.Factory(lambda plan: bytes(plan.steps), takes_self=True),
    )

    @property
    def durable(self) -> bool:
        return SaveStep.FSYNC_NEXT in self.steps and SaveStep.FSYNC_DIR in self.steps


_FLUSHES = frozenset({SaveStep.FSYNC_NEXT, SaveStep.FSYNC_DIR, SaveStep.SYNC_SLOT})
_REPLACE_STEPS: Final = (
    SaveStep.OPEN_DIR,
    SaveStep.LOCK_DIR,
    SaveStep.CREATE_NEXT,
    SaveStep.WRITE_NEXT,
    SaveStep.FSYNC_NEXT,
    SaveStep.CLOSE_NEXT,
    SaveStep.RENAME_NEXT,
    SaveStep.FSYNC_DIR,
    SaveStep.CLOSE_DIR,
)


@functools.cache
def plan_save(
    durability: Durability = Durability.FULL, target_name: str = CHECKPOINT_NAME
) -> SavePlan:
    """The replace-by-rename save: the replace layout's sequence (docs/formats.md).

    ``Durability.NONE`` drops the two flushes and nothing else: the save stays
    atomic against a process crash. ``target_name`` is ``session`` for the replace
    layout; the slotted layout rebuilds ``session.slots`` through the same plan.
    """
    return SavePlan(
        steps=_drop_flushes(_REPLACE_STEPS, durability), target_name=target_name
    )


def _drop_flushes(
    steps: tuple[SaveStep, ...], durability: Durability
) -> tuple[SaveStep, ...]:
    if durability is Durability.NONE:
        return tuple(step for step in steps if step not in _FLUSHES)
    return steps


@attrs.frozen
class SlottedPlan:
    """A slotted save: in place when the record fits, else a rebuild.

    ``in_place`` runs first. When ``OPEN_SLOTS`` finds no file or ``READ_SLOTS``
    finds the record too large, the save goes on with ``rebuild`` (the replace
    sequence after its lock, writing a whole new ``session.slots``) while still
    holding the directory's lock.
    """

    in_place: SavePlan
    rebuild: SavePlan

    @property
    def durable(self) -> bool:
        return SaveStep.SYNC_SLOT in self.in_place.steps and self.rebuild.durable


_IN_PLACE_STEPS: Final = (
    SaveStep.OPEN_DIR,
    SaveStep.LOCK_DIR,
    SaveStep.CHECK_NEXT,
    SaveStep.CHECK_REPLACE,
    SaveStep.OPEN_SLOTS,
    SaveStep.READ_SLOTS,
    SaveStep.WRITE_SLOT,
    SaveStep.SYNC_SLOT,
    SaveStep.CLOSE_SLOTS,
    SaveStep.CLOSE_DIR,
)


@functools.cache
def plan_slotted_save(durability: Durability = Durability.FULL) -> SlottedPlan:
    """The slotted layout's save: one ``fdatasync`` when the record fits."""
    rebuild = plan_save(durability, SLOTS_NAME)
    return SlottedPlan(
        in_place=SavePlan(
            steps=_drop_flushes(_IN_PLACE_STEPS, durability), target_name=SLOTS_NAME
        ),
        rebuild=SavePlan(
            steps=rebuild.steps[rebuild.steps.index(SaveStep.CREATE_NEXT) :],
            target_name=SLOTS_NAME,
        ),
    )


@attrs.frozen
class HeldPlan:
    """A session held across saves: the lock taken once, the files kept open.

    ``acquire`` runs once (open the directory, take its lock, and check what a
    save would check before writing); then ``save`` runs per checkpoint, and
    for the slotted layout ``rebuild`` when a record does not fit; ``release``
    runs once at the end, and closing the directory releases the lock. With
    the lock held throughout, nobody else writes to the session, so a held
    slotted save reads the slots only on its first save and after a failure:
    after the first, it is an ``fstat`` of the directory (``CHECK_DIR_LINKED``:
    the session was not removed meanwhile), ``pwritev`` and ``fdatasync``.
    """

    layout: Layout
    acquire: SavePlan
    save: SavePlan
    rebuild: SavePlan
    release: SavePlan

    @property
    def durable(self) -> bool:
        if self.layout is Layout.REPLACE:
            return self.save.durable
        return SaveStep.SYNC_SLOT in self.save.steps and self.rebuild.durable


_HELD_STEPS: Final = {
    Layout.REPLACE: (
        (SaveStep.OPEN_DIR, SaveStep.LOCK_DIR, SaveStep.CHECK_NEXT),
        (SaveStep.CLOSE_DIR,),
    ),
    Layout.SLOTTED: (
        (
            SaveStep.OPEN_DIR,
            SaveStep.LOCK_DIR,
            SaveStep.CHECK_NEXT,
            SaveStep.CHECK_REPLACE,
        ),
        (SaveStep.CLOSE_SLOTS, SaveStep.CLOSE_DIR),
    ),
}


@functools.cache
def plan_hold(
    durability: Durability = Durability.FULL, layout: Layout = Layout.REPLACE
) -> HeldPlan:
    """Hold a session in ``layout``: each save is the one-shot save without the
    steps that open, lock and close the directory (see ``HeldPlan``)."""
    acquire, release = _HELD_STEPS[layout]

    def between(steps: tuple[SaveStep, ...]) -> tuple[SaveStep, ...]:
        return tuple(s for s in steps if s not in acquire and s not in release)

    rebuild: tuple[SaveStep, ...] = ()
    if layout is Layout.REPLACE:
        target = CHECKPOINT_NAME
        middle = between(plan_save(durability).steps)
    else:
        slotted = plan_slotted_save(durability)
        target = SLOTS_NAME
        middle = between(slotted.in_place.steps)
        opened = middle.index(SaveStep.OPEN_SLOTS) + 1
        middle = (*middle[:opened], SaveStep.CHECK_DIR_LINKED, *middle[opened:])
        rebuild = between(slotted.rebuild.steps)
    return HeldPlan(
        layout=layout,
        acquire=SavePlan(acquire, target_name=target),
        save=SavePlan(middle, target_name=target),
        rebuild=SavePlan(rebuild, target_name=SLOTS_NAME),
        release=SavePlan(release, target_name=target),
    )
