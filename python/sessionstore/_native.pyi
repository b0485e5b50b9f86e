# The native writer backend. Signatures match sessionstore._python_writer, which
# documents the behaviour; lock_state returns 0 (unlocked), 1 (held), 2 (stale).

__all__ = ["break_stale_lock", "load", "lock_state", "save"]

def save(
    location: str,
    data: bytes | bytearray | memoryview,
    codes: bytes,
    next_name: str,
    target: str,
) -> None: ...
def load(path: str) -> bytes: ...
def lock_state(location: str) -> int: ...
def break_stale_lock(location: str) -> bool: ...
