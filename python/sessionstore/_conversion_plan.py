"""The layout conversion's sequence as data.

``convert_layout()`` executes a plan step by step, and the crash-state explorer
models the same plan: one description of the sequence, read by both.

The rule that makes every intermediate state safe: while both ``session`` and
``session.slots`` exist, ``session`` is the checkpoint. So a conversion to the
slotted layout puts ``session.slots`` in place (holding the same checkpoint)
before it removes ``session``, and a conversion to the replace layout renames
``session`` into place first, then removes ``session.slots``. The directory's
lock is held throughout, so no save interleaves.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Collection
from typing import Final, TypeAlias

import attrs

from ._naming import CHECKPOINT_FILES, CHECKPOINT_NAME, NEXT_NAME, SLOTS_NAME
from ._options import Durability, Layout
from ._save_plan import SavePlan, SaveStep, plan_save
from ._slots_format import build_slots_file

FILE_OF: Final = {Layout.REPLACE: CHECKPOINT_NAME, Layout.SLOTTED: SLOTS_NAME}
"""The file that holds a session's checkpoint in each layout."""


class ConversionStep(enum.IntEnum):
    """A step of a conversion that no save has.

    The codes follow on from ``SaveStep``'s, so that a sequence mixing both
    never holds two steps that compare equal.
    """

    FIND_FILES = 32
    """``fstatat(dir, session)``, then ``fstatat(dir, session.slots)``: which
    layout's files are there decides the work (``ConversionPlan.work``)"""
    READ_OLD = 33
    """load the checkpoint from the old layout's file, by its path"""
    DUP_DIR = 34
    """``dup(dir)``: the descriptor ``SAVE_COPY`` hands to the save, which owns
    it and closes it, also when it fails; the conversion's own descriptor keeps
    the lock until ``release``"""
    SAVE_COPY = 35
    """run ``copy_save`` on that duplicate: the new layout's file, holding the
    checkpoint, renamed into place and flushed"""
    REMOVE_OLD = 36
    """``unlinkat(dir, old)``: the old layout's file"""


Step: TypeAlias = SaveStep | ConversionStep


@attrs.frozen
class ConversionPlan:
    """The steps of ``convert_layout()`` from one layout's file to the other's.

    The conversion opens the directory and runs ``survey`` on its descriptor;
    then the ``work`` that what ``FIND_FILES`` found calls for (``copy`` then
    ``removal``, ``removal`` alone, or nothing); ``release`` closes that
    descriptor, which releases the lock, whether the work succeeded or not.
    ``steps`` is the whole sequence of a conversion that copies, with
    ``SAVE_COPY`` unfolded into the save's own steps.
    """

    layout: Layout
    """the layout converted to"""
    copy_save: SavePlan
    """the replace sequence after its lock, writing the new layout's file"""
    survey: tuple[Step, ...]
    copy: tuple[Step, ...]
    removal: tuple[Step, ...]
    release: tuple[Step, ...]

    @property
    def target_name(self) -> str:
        return FILE_OF[self.layout]

    @property
    def old_name(self) -> str:
        return FILE_OF[_OTHER[self.layout]]

    @property
    def next_name(self) -> str:
        return self.copy_save.next_name

    def work(self, found: Collection[str]) -> tuple[Step, ...]:
        """What runs between ``survey`` and ``release``, given the names found.

        Nothing when the old layout's file is not there; only its removal when
        the checkpoint is in the target's file already (``session`` holds it
        whenever it exists); else the copy, then the removal.
        """
        if self.old_name not in found:
            return ()
        if checkpoint_file(found) == self.target_name:
            return self.removal
        return self.copy + self.removal

    def unfold(self, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        """``steps`` with ``SAVE_COPY`` replaced by the steps of ``copy_save``."""
        unfolded: list[Step] = []
        for step in steps:
            if step is ConversionStep.SAVE_COPY:
                unfolded += self.copy_save.steps
            else:
                unfolded.append(step)
        return tuple(unfolded)

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.unfold(self.survey + self.copy + self.removal + self.release)

    def copied(self, checkpoint: bytes) -> bytes:
        """What the new layout's file holds: ``checkpoint``, or a slots file
        whose one record is ``checkpoint``."""
        if self.layout is Layout.SLOTTED:
            return build_slots_file(checkpoint, 1, None)
        return checkpoint


_OTHER: Final = {Layout.REPLACE: Layout.SLOTTED, Layout.SLOTTED: Layout.REPLACE}


def checkpoint_file(found: Collection[str]) -> str | None:
    """Which of the files ``found`` holds the checkpoint (see the module)."""
    for name in CHECKPOINT_FILES:
        if name in found:
            return name
    return None


@functools.cache
def plan_conversion(layout: Layout, durability: Durability) -> ConversionPlan:
    """Convert a session to ``layout``: the copy is the library's replace save
    after its lock, writing ``layout``'s file; ``Durability.NONE`` drops the
    flushes, the removal's directory flush included."""
    save = plan_save(durability, FILE_OF[layout])
    removal: tuple[Step, ...] = (ConversionStep.REMOVE_OLD,)
    if durability is Durability.FULL:
        removal += (SaveStep.FSYNC_DIR,)
    return ConversionPlan(
        layout=layout,
        copy_save=SavePlan(
            steps=save.steps[save.steps.index(SaveStep.CREATE_NEXT) :],
            next_name=NEXT_NAME,
            target_name=save.target_name,
        ),
        survey=(
            SaveStep.OPEN_DIR,
            SaveStep.LOCK_DIR,
            SaveStep.CHECK_NEXT,
            ConversionStep.FIND_FILES,
        ),
        copy=(
            ConversionStep.READ_OLD,
            ConversionStep.DUP_DIR,
            ConversionStep.SAVE_COPY,
        ),
        removal=removal,
        release=(SaveStep.CLOSE_DIR,),
    )
