"""The pure-Python writer backend: the native extension's names, module for module.

Each module here carries the name of the native module it mirrors and runs the
same plans with the same syscalls (``posix`` holds the calls they share). It is
the backend where the extension is not built, and the reference the extension
is tested against.
"""

from .checkpoint_worker import CheckpointWorker
from .held import HeldWriter
from .listing import list_sessions, scan_sessions
from .load import load
from .lock import break_stale_lock, lock_state
from .save import save
from .slotted import load_slots, save_slotted

__all__ = [
    "CheckpointWorker",
    "HeldWriter",
    "break_stale_lock",
    "list_sessions",
    "load",
    "load_slots",
    "lock_state",
    "save",
    "save_slotted",
    "scan_sessions",
]
