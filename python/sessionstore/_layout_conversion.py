"""Moving a session's checkpoint from one layout to the other, crash-safely.

The rule that makes every intermediate state safe: while both ``session`` and
``session.slots`` exist, ``session`` is the checkpoint. So a conversion to the
slotted layout puts ``session.slots`` in place (holding the same checkpoint)
before it removes ``session``, and a conversion to the replace layout renames
``session`` into place first, then removes ``session.slots``. The directory's
lock is held throughout, so no save interleaves.
"""

from __future__ import annotations

import os

from . import _errors, _fallback
from ._fallback.posix import DIR_FLAGS, exists_at, try_lock
from ._naming import CHECKPOINT_NAME, NEXT_NAME, SLOTS_NAME
from ._options import Durability, Layout
from ._save_plan import SaveStep, plan_save
from ._slots_format import build_slots_file


def _locked_steps(durability: Durability, target: str) -> bytes:
    """The replace sequence for a directory already open and locked.

    The writer owns the descriptor it is given and closes it, also when it
    fails: it gets a duplicate, so the lock (held by the open directory both
    share) stays held by the caller's until the old layout's file is removed.
    """
    plan = plan_save(durability, target)
    return bytes(plan.steps[plan.steps.index(SaveStep.CREATE_NEXT) :])


def convert_layout(location: str, layout: Layout, durability: Durability) -> None:
    """Make ``location`` hold its checkpoint in ``layout`` (see the module's docstring).

    A session with no checkpoint needs nothing: its layout is whatever the
    first save writes. LockedStorageError when a writer holds the lock or left
    ``session.next`` behind.
    """
    next_path = os.path.join(location, NEXT_NAME)
    try:
        dir_fd = os.open(location, DIR_FLAGS)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, location) from exc
    try:
        try:
            locked = try_lock(dir_fd)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, location) from exc
        if not locked:
            raise _errors.held(next_path)
        if _exists(location, NEXT_NAME, dir_fd):
            raise _errors.leftover(next_path)
        has_replace = _exists(location, CHECKPOINT_NAME, dir_fd)
        has_slots = _exists(location, SLOTS_NAME, dir_fd)
        if layout is Layout.SLOTTED and has_replace:
            data = _fallback.load(os.path.join(location, CHECKPOINT_NAME))
            image = build_slots_file(data, 1, None)
            steps = _locked_steps(durability, SLOTS_NAME)
            _fallback.save(
                location,
                image,
                steps,
                NEXT_NAME,
                SLOTS_NAME,
                dir_fd=_dup(location, dir_fd),
            )
            _remove(location, CHECKPOINT_NAME, dir_fd, durability)
        elif layout is Layout.REPLACE and has_slots:
            if not has_replace:
                newest = _fallback.load_slots(os.path.join(location, SLOTS_NAME))
                steps = _locked_steps(durability, CHECKPOINT_NAME)
                _fallback.save(
                    location,
                    newest or b"",
                    steps,
                    NEXT_NAME,
                    CHECKPOINT_NAME,
                    dir_fd=_dup(location, dir_fd),
                )
            _remove(location, SLOTS_NAME, dir_fd, durability)
    finally:
        os.close(dir_fd)


def _exists(location: str, name: str, dir_fd: int) -> bool:
    """Whether ``name`` is in the open session directory; errors name its path."""
    try:
        return exists_at(name, dir_fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.path.join(location, name)) from exc


def _dup(location: str, dir_fd: int) -> int:
    """A second descriptor of the session directory, for the writer to own."""
    try:
        return os.dup(dir_fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, location) from exc


def _remove(location: str, name: str, dir_fd: int, durability: Durability) -> None:
    """Unlink the old layout's file and, when durable, flush the directory."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.path.join(location, name)) from exc
    if durability is Durability.FULL:
        try:
            os.fsync(dir_fd)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, location) from exc
