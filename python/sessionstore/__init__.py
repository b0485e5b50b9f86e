"""Crash-safe, atomic storage for the checkpoints of long-running test sessions."""

from __future__ import annotations

from typing import Final

from ._backend import active as _active
from ._checkpoint_writer import CheckpointWriter
from ._errors import CorruptCheckpointError, LockedStorageError
from ._held_session import HeldSession
from ._lock_state import LockState
from ._options import Durability, Layout
from ._repository import SessionStorageRepository
from ._session_info import SessionInfo
from ._storage import SessionStorage
from ._writer_stats import SaveLatency, WriterStats

backend: Final[str] = _active.current.name
"""The writer backend in use: ``"native"`` or ``"python"``."""

__all__ = [
    "CheckpointWriter",
    "CorruptCheckpointError",
    "Durability",
    "HeldSession",
    "Layout",
    "LockState",
    "LockedStorageError",
    "SaveLatency",
    "SessionInfo",
    "SessionStorage",
    "SessionStorageRepository",
    "WriterStats",
    "backend",
]
