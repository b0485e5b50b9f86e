"""Recovery from every crash state, checked with the real library.

Each state is written into a real directory: ``load_checkpoint()`` must give
the old checkpoint or the new one, in full (only the new one once the save had
returned); ``load_previous()`` None in the replace layout and, in the slotted
one, the old checkpoint when the new one loads, else the one before the old one
or None, never anything torn; ``lock_state()`` UNLOCKED, or STALE exactly when
``session.next`` is there; after ``break_stale_lock()`` a save works (and,
slotted, keeps what was recovered as the previous generation). After a
conversion the same checkpoint loads, whole, at every cut; once it had
returned only the new layout's file is left; and ``convert_layout()`` again
(after ``break_stale_lock()``) finishes the job.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from pathlib import Path

import attrs
from explorer import CrashState

from sessionstore import Layout, LockState, SessionStorage
from sessionstore._conversion_plan import FILE_OF
from sessionstore._naming import NEXT_NAME


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
