# The native writer backend. Signatures match sessionstore._fallback, which
# documents the behaviour; lock_state returns 0 (unlocked), 1 (held), 2 (stale).

from typing import Final, final

from sessionstore._fallback.listing import ScannedSession

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

# The step codes of sessionstore._save_plan.SaveStep and the file names of
# sessionstore._naming, as the extension's core spells them.
OPEN_DIR: Final[int]
LOCK_DIR: Final[int]
CREATE_NEXT: Final[int]
WRITE_NEXT: Final[int]
FSYNC_NEXT: Final[int]
CLOSE_NEXT: Final[int]
RENAME_NEXT: Final[int]
FSYNC_DIR: Final[int]
CLOSE_DIR: Final[int]
CHECK_NEXT: Final[int]
CHECK_REPLACE: Final[int]
OPEN_SLOTS: Final[int]
READ_SLOTS: Final[int]
WRITE_SLOT: Final[int]
SYNC_SLOT: Final[int]
CLOSE_SLOTS: Final[int]
CHECK_DIR_LINKED: Final[int]
CHECKPOINT_NAME: Final[str]
NEXT_NAME: Final[str]
SLOTS_NAME: Final[str]

def save(
    location: str,
    data: bytes | bytearray | memoryview,
    codes: bytes,
    next_name: str,
    target: str,
) -> None: ...
def load(path: str) -> bytes: ...
def lock_state(location: str) -> int: ...

# The slotted layout; sessionstore._fallback.slotted documents the behaviour.
def save_slotted(
    location: str,
    data: bytes | bytearray | memoryview,
    in_place: bytes,
    rebuild: bytes,
) -> None: ...
def load_slots(path: str, previous: bool = False) -> bytes | None: ...
def break_stale_lock(location: str) -> bool: ...

# The repository listing; sessionstore._fallback.listing documents the behaviour.
# A scanned session is _fallback.listing.ScannedSession: (name, mtime_ns, st_dev,
# st_ino, next_ino, next_ctime_ns, errno, entries, checkpoint), a checkpoint
# (file name, st_mode, errno, size, mtime_ns).

def list_sessions(location: str) -> list[str] | None: ...
def scan_sessions(
    location: str,
) -> tuple[list[ScannedSession], list[ScannedSession]] | None: ...

# The worker of sessionstore.CheckpointWriter, which documents the behaviour.
@final
class CheckpointWorker:
    def __new__(
        cls, location: str, codes: bytes, next_name: str, target: str
    ) -> CheckpointWorker: ...
    @staticmethod
    def slotted(location: str, in_place: bytes, rebuild: bytes) -> CheckpointWorker: ...
    @property
    def saves(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def submit(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def stop(self, timeout: float) -> bool: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def stats(
        self,
    ) -> tuple[int, int, int, int, int, BaseException | None, list[int]]: ...

# The writer of sessionstore.HeldSession; sessionstore._fallback.held
# documents the behaviour.
@final
class HeldWriter:
    def __new__(
        cls,
        location: str,
        acquire: bytes,
        save: bytes,
        rebuild: bytes,
        release: bytes,
        slotted: bool,
    ) -> HeldWriter: ...
    @property
    def closed(self) -> bool: ...
    def save(self, data: bytes | bytearray | memoryview) -> None: ...
    def close(self) -> None: ...
    def forget(self) -> None: ...
