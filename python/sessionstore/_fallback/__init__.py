"""The pure-Python writer backend: the native extension's names, module for module.

Each module here carries the name of the native module it mirrors and runs the
same plans with the same syscalls (``posix`` holds the calls they share). It is
the backend where the extension is not built, and the reference the extension
is tested against.
"""

from typing import Final

from .._naming import CHECKPOINT_NAME, NEXT_NAME, SLOTS_NAME
from .._save_plan import SaveStep
from .checkpoint_worker import CheckpointWorker
from .held import HeldWriter
from .listing import list_sessions, scan_sessions
from .load import load
from .lock import break_stale_lock, lock_state
from .save import save
from .slotted import load_slots, save_slotted

# The step codes, as the extension exports them (it spells them once, in
# rust/save_plan.rs; here they are the core's own).
OPEN_DIR: Final = int(SaveStep.OPEN_DIR)
LOCK_DIR: Final = int(SaveStep.LOCK_DIR)
CREATE_NEXT: Final = int(SaveStep.CREATE_NEXT)
WRITE_NEXT: Final = int(SaveStep.WRITE_NEXT)
FSYNC_NEXT: Final = int(SaveStep.FSYNC_NEXT)
CLOSE_NEXT: Final = int(SaveStep.CLOSE_NEXT)
RENAME_NEXT: Final = int(SaveStep.RENAME_NEXT)
FSYNC_DIR: Final = int(SaveStep.FSYNC_DIR)
CLOSE_DIR: Final = int(SaveStep.CLOSE_DIR)
CHECK_NEXT: Final = int(SaveStep.CHECK_NEXT)
CHECK_REPLACE: Final = int(SaveStep.CHECK_REPLACE)
OPEN_SLOTS: Final = int(SaveStep.OPEN_SLOTS)
READ_SLOTS: Final = int(SaveStep.READ_SLOTS)
WRITE_SLOT: Final = int(SaveStep.WRITE_SLOT)
SYNC_SLOT: Final = int(SaveStep.SYNC_SLOT)
CLOSE_SLOTS: Final = int(SaveStep.CLOSE_SLOTS)
CHECK_DIR_LINKED: Final = int(SaveStep.CHECK_DIR_LINKED)

__all__ = [
    "CHECKPOINT_NAME",
    "CHECK_DIR_LINKED",
    "CHECK_NEXT",
    "CHECK_REPLACE",
    "CLOSE_DIR",
    "CLOSE_NEXT",
    "CLOSE_SLOTS",
    "CREATE_NEXT",
    "FSYNC_DIR",
    "FSYNC_NEXT",
    "LOCK_DIR",
    "NEXT_NAME",
    "OPEN_DIR",
    "OPEN_SLOTS",
    "READ_SLOTS",
    "RENAME_NEXT",
    "SLOTS_NAME",
    "SYNC_SLOT",
    "WRITE_NEXT",
    "WRITE_SLOT",
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
