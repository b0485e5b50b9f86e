"""Crash-safe, atomic storage for the checkpoints of long-running test sessions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ._backend import active as _active
from ._checkpoint_writer import CheckpointWriter
from ._errors import CorruptCheckpointError, LockedStorageError
from ._held_session import HeldSession
from ._lock_state import LockState
from ._options import Durability, Layout
from ._repository import SessionStorageRepository
from ._session_contents import SessionContents
from ._session_info import CheckpointStatus, SessionInfo
from ._storage import SessionStorage
from ._writer_stats import SaveLatency, WriterStats

backend: Final[str] = _active.current.name
"""The writer backend in use: ``"native"`` or ``"python"``."""


if TYPE_CHECKING:
    __version__: str
    """The version of the installed distribution, from its metadata."""


def __getattr__(name: str) -> str:
    # The version is read from the distribution's metadata when first asked
    # for: importlib.metadata costs about a third of the package's import.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("sessionstore")
    except PackageNotFoundError:
        # Imported from a source tree that was never installed: no metadata.
        found = "0+unknown"
    globals()["__version__"] = found
    return found


__all__ = [
    "CheckpointStatus",
    "CheckpointWriter",
    "CorruptCheckpointError",
    "Durability",
    "HeldSession",
    "Layout",
    "LockState",
    "LockedStorageError",
    "SaveLatency",
    "SessionContents",
    "SessionInfo",
    "SessionStorage",
    "SessionStorageRepository",
    "WriterStats",
    "__version__",
    "backend",
]
