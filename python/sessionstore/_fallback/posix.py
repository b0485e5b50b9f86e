"""The POSIX calls both fallback writers and the repository share.

Open flags, the non-waiting flock, a look at a name in an open directory, the
open of a regular file for reading and the kernel's lock table: each is the
same call sequence as the native backend's ``posix`` module.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import Final

from .._lock_state import (
    INITIAL_PID_NAMESPACE_INODE,
    PROC_LOCKS,
    PROC_PID_NAMESPACE,
    LockTable,
    parse_proc_locks,
)

# A symlinked session is refused (ENOTDIR: the link itself is no directory), so
# nothing is saved or unlocked through one; a symlinked checkpoint file is
# refused by loads (ELOOP). A load opens without waiting (a FIFO's open would
# wait for a writer) and then reads only a regular file.
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
READ_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
NOT_REGULAR: Final = "not a regular file"
NO_PROGRESS: Final = "write made no progress"

# flock says "busy" with EWOULDBLOCK; on Linux that is EAGAIN, elsewhere it may be
# either, so both mean "a live writer holds the lock".
_BUSY: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})


def with_path(exc: OSError, path: str, path2: str | None = None) -> OSError:
    """The same error (same errno, so the same subclass) naming the full path."""
    if exc.errno is None:
        return exc
    if path2 is None:
        return OSError(exc.errno, exc.strerror, path)
    return OSError(exc.errno, exc.strerror, path, None, path2)


def try_lock(dir_fd: int) -> bool:
    """Take the session directory's flock without waiting.

    False when a live writer holds it; any other failure is raised.
    """
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise
    return True


def exists_at(name: str, dir_fd: int) -> bool:
    """Whether ``name`` exists in the open directory ``dir_fd`` (links not followed)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def open_regular(path: str) -> int:
    """``path`` opened for reading, when it is a regular file.

    A FIFO, a device or a socket would block a read or never end: each is
    refused (EINVAL, "not a regular file"), a directory with EISDIR, before
    anything is read. The error names ``path``; nothing is left open.
    """
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as exc:
        raise with_path(exc, path) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            if stat.S_ISDIR(mode):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            raise OSError(errno.EINVAL, NOT_REGULAR, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sees_every_lock() -> bool:
    """Whether ``/proc/locks`` read from here shows every holder: only from the
    initial PID namespace (anything unknown counts as no)."""
    try:
        return os.stat(PROC_PID_NAMESPACE).st_ino == INITIAL_PID_NAMESPACE_INODE
    except OSError:
        return False


def read_proc_locks() -> str | None:
    """The text of the kernel's lock table as it is now; None where there is none."""
    try:
        with open(PROC_LOCKS, encoding="ascii", errors="replace") as table:
            return table.read()
    except OSError:
        return None


def read_lock_table() -> LockTable | None:
    """The kernel's lock table as it is now; None where there is none to read."""
    text = read_proc_locks()
    if text is None:
        return None
    return LockTable(parse_proc_locks(text), complete=_sees_every_lock())
