"""The step runner: a plan's codes executed in Python, and the replace sequence.

One runner executes every plan (replace, slotted, held, and a layout
conversion) over one state: each step code has one function here, in
``slotted`` or in the conversion (the table a plan runs with), and one place
it acts at, which names the path in its errors. The same plans, the same
syscalls as the native backend's ``save`` module.

The descriptors belong to the state and to whoever made it: a one-shot save
closes what is left open when it ends, success or failure; a held session
keeps them from its acquire to its release. A failed run undoes only what it
did to the next file (closes it, and unlinks it when it created it), so a
failed save never leaves a lock behind and never touches the previous
checkpoint.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from .. import _errors
from .._errors import CorruptCheckpointError
from .._naming import CHECKPOINT_NAME, SLOTS_NAME
from .._save_plan import SaveStep
from .._slots_format import SlotsFormatError
from .posix import DIR_FLAGS, NO_PROGRESS, try_lock, with_path

if TYPE_CHECKING:
    from .._slots_format import RecordHeader, SlotChoice
    from .slotted import SlotsView

_NEXT_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_NEXT_MODE: Final = 0o600


class SaveState:
    """What a run of steps has open and knows: one save's, or a held session's
    across saves (``known`` says ``view`` is what is on disk: true after a held
    session's own successful save, as nobody else writes while it holds the
    lock). ``data`` and the names are those of the run going on."""

    __slots__ = (
        "choice",
        "codes",
        "created",
        "data",
        "dir_fd",
        "known",
        "location",
        "next_fd",
        "next_name",
        "previous",
        "slots_fd",
        "target",
        "view",
        "written",
    )

    def __init__(self, location: str, next_name: str, target: str) -> None:
        self.location = location
        self.next_name = next_name
        self.target = target
        self.data: bytes | bytearray | memoryview = b""
        self.codes = b""
        self.dir_fd = -1
        self.next_fd = -1
        self.created = False
        self.slots_fd = -1
        self.view: SlotsView | None = None
        self.choice: SlotChoice | None = None
        self.previous: tuple[int, bytes] | None = None
        self.written: RecordHeader | None = None
        self.known = False

    def path(self, name: str) -> str:
        return os.path.join(self.location, name)

    def close(self) -> None:
        """Close what is still open: the slots file, then the directory."""
        slots_fd, self.slots_fd = self.slots_fd, -1
        dir_fd, self.dir_fd = self.dir_fd, -1
        try:
            if slots_fd >= 0:
                os.close(slots_fd)
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)


StateT = TypeVar("StateT", bound=SaveState)

Step = Callable[[StateT], bool]
"""One step's syscalls; False ends the plan early (a slotted save that goes on
with a rebuild), True goes on with the next step."""


class At(enum.Enum):
    """What a step acts on: the path its errors name."""

    LOCATION = enum.auto()
    NEXT = enum.auto()
    RENAME = enum.auto()
    """the next file and the target: both paths"""
    CHECKPOINT = enum.auto()
    SLOTS = enum.auto()
    NAMED = enum.auto()
    """a step whose errors name their path already"""


AT: Final[Mapping[int, At]] = {
    SaveStep.OPEN_DIR: At.LOCATION,
    SaveStep.LOCK_DIR: At.LOCATION,
    SaveStep.CREATE_NEXT: At.NEXT,
    SaveStep.WRITE_NEXT: At.NEXT,
    SaveStep.FSYNC_NEXT: At.NEXT,
    SaveStep.CLOSE_NEXT: At.NEXT,
    SaveStep.RENAME_NEXT: At.RENAME,
    SaveStep.FSYNC_DIR: At.LOCATION,
    SaveStep.CLOSE_DIR: At.LOCATION,
    SaveStep.CHECK_NEXT: At.NEXT,
    SaveStep.CHECK_REPLACE: At.CHECKPOINT,
    SaveStep.OPEN_SLOTS: At.SLOTS,
    SaveStep.READ_SLOTS: At.SLOTS,
    SaveStep.WRITE_SLOT: At.SLOTS,
    SaveStep.SYNC_SLOT: At.SLOTS,
    SaveStep.CLOSE_SLOTS: At.SLOTS,
    SaveStep.CHECK_DIR_LINKED: At.LOCATION,
}


class Steps(Generic[StateT]):
    """The step functions a plan runs with, by code; where each acts
    (``at``); and the error for a code with none (``code`` and ``codes``
    formatted in)."""

    __slots__ = ("at", "functions", "unknown")

    def __init__(
        self,
        functions: Mapping[int, Step[StateT]],
        unknown: str,
        at: Mapping[int, At] = AT,
    ) -> None:
        self.functions = {int(step): f for step, f in functions.items()}
        self.unknown = unknown
        self.at = {int(step): where for step, where in at.items()}


def run(state: StateT, codes: bytes, steps: Steps[StateT]) -> bool:
    """Execute ``codes`` on ``state`` with the step functions of ``steps``:
    True when every step ran, False when one ended the plan early.

    A failure undoes what the run did to the next file, then raises the
    step's error naming the path it acts at (an error while undoing becomes
    its context).
    """
    code = 0
    state.codes = codes
    get = steps.functions.get
    try:
        for code in codes:
            step = get(code)
            if step is None:
                raise ValueError(steps.unknown.format(code=code, codes=codes))
            if not step(state):
                return False
    except BaseException as exc:
        failure = _failure(exc, state, steps.at.get(code, At.NAMED))
    else:
        return True
    try:
        try:
            _undo(state)
        except OSError:
            raise failure  # noqa: B904
        raise failure
    finally:
        # The raised error's traceback holds this frame: without this, the
        # frame would hold the error in turn, a cycle keeping a failed held
        # session (and its lock) alive until the cycle collector runs.
        del failure


def _failure(exc: BaseException, state: SaveState, at: At) -> BaseException:
    """The error a failed step raises: an OSError names the path it acts at."""
    if isinstance(exc, SlotsFormatError):
        return CorruptCheckpointError(state.path(SLOTS_NAME), str(exc))
    if (
        not isinstance(exc, OSError)
        or isinstance(exc, (_errors.LockedStorageError, CorruptCheckpointError))
        or at is At.NAMED
    ):
        return exc
    if at is At.RENAME:
        return with_path(exc, state.path(state.next_name), state.path(state.target))
    return with_path(exc, _path_at(state, at))


def _path_at(state: SaveState, at: At) -> str:
    if at is At.NEXT:
        return state.path(state.next_name)
    if at is At.CHECKPOINT:
        return state.path(CHECKPOINT_NAME)
    if at is At.SLOTS:
        return state.path(SLOTS_NAME)
    return state.location


def _undo(state: SaveState) -> None:
    """Close the next file a failed run left open, and unlink it when the run
    created it."""
    next_fd, state.next_fd = state.next_fd, -1
    created, state.created = state.created, False
    try:
        if next_fd >= 0:
            os.close(next_fd)
    finally:
        if created:
            os.unlink(state.next_name, dir_fd=state.dir_fd)


def _open_dir(state: SaveState) -> bool:
    state.dir_fd = os.open(state.location, DIR_FLAGS)
    return True


def _lock_dir(state: SaveState) -> bool:
    if not try_lock(state.dir_fd):
        raise _errors.held(state.path(state.next_name))
    return True


def _create_next(state: SaveState) -> bool:
    try:
        state.next_fd = os.open(
            state.next_name, _NEXT_FLAGS, _NEXT_MODE, dir_fd=state.dir_fd
        )
    except FileExistsError:
        raise _errors.leftover(state.path(state.next_name)) from None
    state.created = True
    return True


def _write_next(state: SaveState) -> bool:
    data = state.data
    total = len(data)
    written = os.write(state.next_fd, data)
    while written < total:
        step = os.write(state.next_fd, memoryview(data)[written:])
        if step == 0:
            raise OSError(errno.EIO, NO_PROGRESS)
        written += step
    return True


def _fsync_next(state: SaveState) -> bool:
    os.fsync(state.next_fd)
    return True


def _close_next(state: SaveState) -> bool:
    fd, state.next_fd = state.next_fd, -1
    os.close(fd)
    return True


def _rename_next(state: SaveState) -> bool:
    dir_fd = state.dir_fd
    os.rename(state.next_name, state.target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    state.created = False
    return True


def _fsync_dir(state: SaveState) -> bool:
    os.fsync(state.dir_fd)
    return True


def _close_dir(state: SaveState) -> bool:
    fd, state.dir_fd = state.dir_fd, -1
    os.close(fd)
    return True


REPLACE_STEPS: Final = Steps(
    {
        SaveStep.OPEN_DIR: _open_dir,
        SaveStep.LOCK_DIR: _lock_dir,
        SaveStep.CREATE_NEXT: _create_next,
        SaveStep.WRITE_NEXT: _write_next,
        SaveStep.FSYNC_NEXT: _fsync_next,
        SaveStep.CLOSE_NEXT: _close_next,
        SaveStep.RENAME_NEXT: _rename_next,
        SaveStep.FSYNC_DIR: _fsync_dir,
        SaveStep.CLOSE_DIR: _close_dir,
    },
    "unknown save step {code} in plan {codes!r}",
)
"""The steps of the replace sequence; ``slotted.STEPS`` adds the slotted ones."""


def save(
    location: str,
    data: bytes | bytearray | memoryview,
    codes: bytes,
    next_name: str,
    target: str,
    *,
    dir_fd: int = -1,
) -> None:
    """Execute a replace plan (``codes``) in ``location``.

    ``data`` is a byte-shaped, contiguous view. ``dir_fd`` is the directory
    already opened and locked, handed over (the plan starts after the lock):
    like a directory the plan opens, it is closed when the save ends.
    """
    state = SaveState(location, next_name, target)
    state.data = data
    state.dir_fd = dir_fd
    try:
        run(state, codes, REPLACE_STEPS)
    finally:
        state.close()
