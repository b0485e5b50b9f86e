"""Crash-safe, atomic storage for the checkpoints of long-running test sessions."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final

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


def _installed_version() -> str:
    try:
        return version("sessionstore")
    except PackageNotFoundError:
        # Imported from a source tree that was never installed: no metadata.
        return "0+unknown"


__version__: Final[str] = _installed_version()
"""The version of the installed distribution, from its metadata."""

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
