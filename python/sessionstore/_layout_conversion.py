"""Moving a session's checkpoint from one layout to the other, crash-safely.

This executes ``plan_conversion()`` with the fallback's step runner (a
conversion always runs in Python): the steps it shares with a save are the
save's own functions, and the conversion's own steps are here. The plan's
module says why every state between two steps is safe.
"""

from __future__ import annotations

import os
from typing import Final

from . import _fallback
from ._conversion_plan import (
    ConversionPlan,
    ConversionStep,
    plan_conversion,
)
from ._fallback.posix import exists_at, with_path
from ._fallback.save import AT, At, SaveState, Steps, run
from ._fallback.slotted import STEPS as SLOTTED_STEPS
from ._naming import CHECKPOINT_FILES, CHECKPOINT_NAME
from ._options import Durability, Layout
from ._save_plan import SaveStep


def convert_layout(location: str, layout: Layout, durability: Durability) -> None:
    """Make ``location`` hold its checkpoint in ``layout`` (see ``ConversionPlan``).

    A session with no checkpoint needs nothing: its layout is whatever the
    first save writes. LockedStorageError when a writer holds the lock or left
    ``session.next`` behind.
    """
    plan = plan_conversion(layout, durability)
    state = _ConversionState(location, plan)
    try:
        run(state, bytes(plan.survey), _STEPS)
        run(state, bytes(plan.work(state.found)), _STEPS)
    finally:
        if state.dir_fd >= 0:
            run(state, bytes(plan.release), _STEPS)


class _ConversionState(SaveState):
    """A conversion in progress: its descriptors, and what it learnt."""

    __slots__ = ("checkpoint", "copy_fd", "found", "plan")

    def __init__(self, location: str, plan: ConversionPlan) -> None:
        super().__init__(location, plan.next_name, plan.target_name)
        self.plan = plan
        self.found: frozenset[str] = frozenset()
        self.checkpoint = b""
        self.copy_fd = -1


def _exists(state: _ConversionState, name: str) -> bool:
    try:
        return exists_at(name, state.dir_fd)
    except OSError as exc:
        raise with_path(exc, state.path(name)) from exc


def _find_files(state: _ConversionState) -> bool:
    state.found = frozenset(name for name in CHECKPOINT_FILES if _exists(state, name))
    return True


def _read_old(state: _ConversionState) -> bool:
    path = state.path(state.plan.old_name)
    if state.plan.old_name == CHECKPOINT_NAME:
        state.checkpoint = _fallback.load(path)
    else:
        state.checkpoint = _fallback.load_slots(path) or b""
    return True


def _dup_dir(state: _ConversionState) -> bool:
    state.copy_fd = os.dup(state.dir_fd)
    return True


def _save_copy(state: _ConversionState) -> bool:
    """The copy's own save, on a duplicate of the directory descriptor (which
    that save closes), so the conversion's lock outlives it."""
    if state.copy_fd < 0:
        raise ValueError("SAVE_COPY before DUP_DIR")
    copy_fd, state.copy_fd = state.copy_fd, -1
    save = state.plan.copy_save
    _fallback.save(
        state.location,
        state.plan.copied(state.checkpoint),
        save.codes,
        save.next_name,
        save.target_name,
        dir_fd=copy_fd,
    )
    return True


def _remove_old(state: _ConversionState) -> bool:
    name = state.plan.old_name
    try:
        os.unlink(name, dir_fd=state.dir_fd)
    except OSError as exc:
        raise with_path(exc, state.path(name)) from exc
    return True


_SHARED: Final = (
    SaveStep.OPEN_DIR,
    SaveStep.LOCK_DIR,
    SaveStep.CHECK_NEXT,
    SaveStep.FSYNC_DIR,
    SaveStep.CLOSE_DIR,
)

_STEPS: Final = Steps[_ConversionState](
    {
        **{step: SLOTTED_STEPS.functions[step] for step in _SHARED},
        ConversionStep.FIND_FILES: _find_files,
        ConversionStep.READ_OLD: _read_old,
        ConversionStep.DUP_DIR: _dup_dir,
        ConversionStep.SAVE_COPY: _save_copy,
        ConversionStep.REMOVE_OLD: _remove_old,
    },
    "{code} is not a step of a conversion (in {codes!r})",
    {
        **AT,
        ConversionStep.FIND_FILES: At.NAMED,
        ConversionStep.READ_OLD: At.NAMED,
        ConversionStep.DUP_DIR: At.LOCATION,
        ConversionStep.SAVE_COPY: At.NAMED,
        ConversionStep.REMOVE_OLD: At.NAMED,
    },
)
"""The steps of a conversion: the directory steps a save has, and its own."""
