"""Moving a session's checkpoint from one layout to the other, crash-safely.

This executes ``plan_conversion()`` step by step; the plan's module says why
every state between two steps is safe.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from . import _errors, _fallback
from ._conversion_plan import (
    SURVEYED,
    ConversionPlan,
    ConversionStep,
    Step,
    plan_conversion,
)
from ._fallback.posix import DIR_FLAGS, exists_at, try_lock
from ._naming import CHECKPOINT_NAME
from ._options import Durability, Layout
from ._save_plan import SaveStep

_P = ParamSpec("_P")
_T = TypeVar("_T")


def convert_layout(location: str, layout: Layout, durability: Durability) -> None:
    """Make ``location`` hold its checkpoint in ``layout`` (see ``ConversionPlan``).

    A session with no checkpoint needs nothing: its layout is whatever the
    first save writes. LockedStorageError when a writer holds the lock or left
    ``session.next`` behind.
    """
    plan = plan_conversion(layout, durability)
    conversion = _Conversion(location, plan)
    try:
        for step in plan.survey:
            conversion.run(step)
        for step in plan.work(conversion.found):
            conversion.run(step)
    finally:
        if conversion.dir_fd is not None:
            for step in plan.release:
                conversion.run(step)


class _Conversion:
    """One conversion in progress: its directory descriptor and what it learnt."""

    def __init__(self, location: str, plan: ConversionPlan) -> None:
        self.location = location
        self.plan = plan
        self.dir_fd: int | None = None
        self.found: frozenset[str] = frozenset()
        self.checkpoint = b""
        self.copy_fd: int | None = None

    def run(self, step: Step) -> None:
        if step is SaveStep.OPEN_DIR:
            self.dir_fd = _named(self.location, os.open, self.location, DIR_FLAGS)
        elif step is SaveStep.LOCK_DIR:
            if not _named(self.location, try_lock, self._dir()):
                raise _errors.held(self._path(self.plan.next_name))
        elif step is SaveStep.CHECK_NEXT:
            if self._exists(self.plan.next_name):
                raise _errors.leftover(self._path(self.plan.next_name))
        elif step is ConversionStep.FIND_FILES:
            self.found = frozenset(name for name in SURVEYED if self._exists(name))
        elif step is ConversionStep.READ_OLD:
            self.checkpoint = self._read(self.plan.old_name)
        elif step is ConversionStep.DUP_DIR:
            self.copy_fd = _named(self.location, os.dup, self._dir())
        elif step is ConversionStep.SAVE_COPY:
            self._save_copy()
        elif step is ConversionStep.REMOVE_OLD:
            name = self.plan.old_name
            _named(self._path(name), os.unlink, name, dir_fd=self._dir())
        elif step is SaveStep.FSYNC_DIR:
            _named(self.location, os.fsync, self._dir())
        elif step is SaveStep.CLOSE_DIR:
            dir_fd, self.dir_fd = self._dir(), None
            os.close(dir_fd)
        else:
            raise ValueError(f"{step!r} is not a step of a conversion")

    def _save_copy(self) -> None:
        if self.copy_fd is None:
            raise ValueError("SAVE_COPY before DUP_DIR")
        copy_fd, self.copy_fd = self.copy_fd, None
        save = self.plan.copy_save
        _fallback.save(
            self.location,
            self.plan.copied(self.checkpoint),
            save.codes,
            save.next_name,
            save.target_name,
            dir_fd=copy_fd,
        )

    def _read(self, name: str) -> bytes:
        path = self._path(name)
        if name == CHECKPOINT_NAME:
            return _fallback.load(path)
        return _fallback.load_slots(path) or b""

    def _dir(self) -> int:
        if self.dir_fd is None:
            raise ValueError("a step on the session directory before OPEN_DIR")
        return self.dir_fd

    def _path(self, name: str) -> str:
        return os.path.join(self.location, name)

    def _exists(self, name: str) -> bool:
        return _named(self._path(name), exists_at, name, self._dir())


def _named(
    path: str, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """``call(*args, **kwargs)``, its OSError naming ``path``."""
    try:
        return call(*args, **kwargs)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from exc
