"""The pure-Python writer backend: the same plans, the same syscalls as the native one.

It is the fallback where the extension is not built, and the reference the
native backend is tested against. Each function takes plain paths and returns
plain values; the storage above it decides what they mean.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import Final

from . import _errors
from ._lock_state import (
    PROC_LOCKS,
    FileKey,
    LockState,
    LockTable,
    NextFile,
    classify_lock,
    parse_proc_locks,
)
from ._naming import NEXT_NAME
from ._save_plan import SaveStep

# A symlinked session is refused (ENOTDIR: the link itself is no directory), so
# nothing is saved or unlocked through one; a symlinked checkpoint file is
# refused by loads (ELOOP). A load opens without waiting (a FIFO's open would
# wait for a writer) and then reads only a regular file.
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
READ_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
NOT_REGULAR: Final = "not a regular file"
_NEXT_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_NEXT_MODE: Final = 0o600

# flock says "busy" with EWOULDBLOCK; on Linux that is EAGAIN, elsewhere it may be
# either, so both mean "a live writer holds the lock".
_BUSY: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})

_OPEN_DIR: Final = SaveStep.OPEN_DIR.value
_LOCK_DIR: Final = SaveStep.LOCK_DIR.value
_CREATE_NEXT: Final = SaveStep.CREATE_NEXT.value
_WRITE_NEXT: Final = SaveStep.WRITE_NEXT.value
_FSYNC_NEXT: Final = SaveStep.FSYNC_NEXT.value
_CLOSE_NEXT: Final = SaveStep.CLOSE_NEXT.value
_RENAME_NEXT: Final = SaveStep.RENAME_NEXT.value
_FSYNC_DIR: Final = SaveStep.FSYNC_DIR.value
_CLOSE_DIR: Final = SaveStep.CLOSE_DIR.value


def _with_path(exc: OSError, path: str, path2: str | None = None) -> OSError:
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


def save(
    location: str,
    data: bytes | bytearray | memoryview,
    codes: bytes,
    next_name: str,
    target: str,
    *,
    dir_fd: int = -1,
) -> None:
    """Execute a save plan (``codes``) in ``location``.

    ``data`` is a byte-shaped, contiguous view. A failure after this save created
    the next file unlinks it before the error is raised, so a failed save never
    leaves a lock behind and never touches the previous checkpoint. ``dir_fd``
    is the directory already opened and locked (a slotted save going on with a
    rebuild, or a held session: the plan starts after the lock). A plan that
    closes the directory owns it from then on and closes it on failure too;
    one that does not (a held session's) leaves it open either way.
    """
    owns_dir = dir_fd < 0 or _CLOSE_DIR in codes
    next_fd = -1
    created = False
    next_path = os.path.join(location, next_name)
    path = location
    try:
        for code in codes:
            if code == _OPEN_DIR:
                path = location
                dir_fd = os.open(location, DIR_FLAGS)
            elif code == _LOCK_DIR:
                if not try_lock(dir_fd):
                    raise _errors.held(next_path)
            elif code == _CREATE_NEXT:
                path = next_path
                try:
                    next_fd = os.open(next_name, _NEXT_FLAGS, _NEXT_MODE, dir_fd=dir_fd)
                except FileExistsError:
                    raise _errors.leftover(next_path) from None
                created = True
            elif code == _WRITE_NEXT:
                path = next_path
                total = len(data)
                written = os.write(next_fd, data)
                while written < total:
                    step = os.write(next_fd, memoryview(data)[written:])
                    if step == 0:
                        raise OSError(errno.EIO, "write made no progress", next_path)
                    written += step
            elif code == _FSYNC_NEXT:
                path = next_path
                os.fsync(next_fd)
            elif code == _CLOSE_NEXT:
                path = next_path
                fd, next_fd = next_fd, -1
                os.close(fd)
            elif code == _RENAME_NEXT:
                path = next_path
                os.rename(next_name, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                created = False
            elif code == _FSYNC_DIR:
                path = location
                os.fsync(dir_fd)
            elif code == _CLOSE_DIR:
                path = location
                fd, dir_fd = dir_fd, -1
                os.close(fd)
            else:
                raise ValueError(f"unknown save step {code} in plan {codes!r}")
    except BaseException as exc:
        failure = exc
        if isinstance(exc, OSError) and not isinstance(exc, _errors.LockedStorageError):
            if code == _RENAME_NEXT:
                failure = _with_path(exc, next_path, os.path.join(location, target))
            else:
                failure = _with_path(exc, path)
    else:
        return
    try:
        _cleanup(dir_fd if owns_dir else -1, next_fd, created, next_name, dir_fd)
    except OSError:
        # Undoing failed too: that error becomes the context of the save's own
        # error, which is still the one raised.
        raise failure  # noqa: B904
    raise failure


def _cleanup(
    dir_fd: int, next_fd: int, created: bool, next_name: str, in_dir: int
) -> None:
    """Undo what a failed save did, so no lock and no partial file are left:
    unlink the next file in ``in_dir``, and close ``dir_fd`` when it is not -1."""
    try:
        if next_fd >= 0:
            os.close(next_fd)
    finally:
        try:
            if created:
                os.unlink(next_name, dir_fd=in_dir)
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)


def open_regular(path: str) -> int:
    """``path`` opened for reading, when it is a regular file.

    A FIFO, a device or a socket would block a read or never end: each is
    refused (EINVAL, "not a regular file"), a directory with EISDIR, before
    anything is read. The error names ``path``; nothing is left open.
    """
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as exc:
        raise _with_path(exc, path) from exc
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


def load(path: str) -> bytes:
    """Every byte of the regular file at ``path``, whatever its size."""
    fd = open_regular(path)
    try:
        with open(fd, "rb", buffering=0, closefd=False) as stream:
            return stream.readall()
    except OSError as exc:
        raise _with_path(exc, path) from exc
    finally:
        os.close(fd)


def read_lock_table() -> LockTable | None:
    """The kernel's lock table as it is now; None where there is none to read."""
    try:
        with open(PROC_LOCKS, encoding="ascii", errors="replace") as table:
            return LockTable(parse_proc_locks(table.read()))
    except OSError:
        return None


def _held(dir_fd: int, *, next_exists: bool) -> bool:
    """Whether a live process holds the flock of the open directory ``dir_fd``.

    Read from the kernel's lock table where that settles it, so that looking at
    a session never makes the flock of a writer starting at that moment fail.
    The lock is tried instead where the table cannot tell (it is missing, or
    names the inode under another device number, as for btrfs subvolumes), and
    where it says "free" while ``session.next`` is there: that answer means
    STALE, an invitation to break the lock, and a table longer than a page is
    read in pieces taken at different moments, which can miss a holder. Trying
    cannot miss one; and with ``session.next`` in place a writer starting now
    fails anyway, so only a writer starting just as another one finishes can
    see the try as a live writer.
    """
    st = os.fstat(dir_fd)
    key = FileKey(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    table = read_lock_table()
    listed = None if table is None else table.holds(key)
    if listed is True or (listed is False and not next_exists):
        return listed
    if not try_lock(dir_fd):
        return True
    fcntl.flock(dir_fd, fcntl.LOCK_UN)
    return False


def _look_at_next(dir_fd: int) -> NextFile | None:
    """``session.next`` in the open directory ``dir_fd`` as it is now, or None."""
    try:
        st = os.stat(NEXT_NAME, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return NextFile(st.st_ino, st.st_ctime_ns)


def lock_state(location: str) -> LockState:
    """The lock of the session at ``location``; FileNotFoundError when it is missing."""
    try:
        dir_fd = os.open(location, DIR_FLAGS)
    except OSError as exc:
        raise _with_path(exc, location) from exc
    try:
        before = _look_at_next(dir_fd)
        held = _held(dir_fd, next_exists=before is not None)
        after = before if held else _look_at_next(dir_fd)
        return classify_lock(held=held, next_before=before, next_after=after)
    except OSError as exc:
        raise _with_path(exc, location) from exc
    finally:
        os.close(dir_fd)


def break_stale_lock(location: str) -> bool:
    """Remove a leftover ``session.next`` only while no live writer can hold the lock.

    Takes the directory's flock itself: a writer is either done (and its next
    file is a leftover) or cannot start until this returns. False when a live
    writer holds the lock or there is nothing to break.
    """
    try:
        dir_fd = os.open(location, DIR_FLAGS)
    except OSError as exc:
        raise _with_path(exc, location) from exc
    try:
        try:
            if not try_lock(dir_fd):
                return False
        except OSError as exc:
            raise _with_path(exc, location) from exc
        try:
            # Looked up first: a read-only filesystem refuses an unlink with
            # EROFS before it looks the name up; nothing to break is no error.
            if _look_at_next(dir_fd) is None:
                return False
            os.unlink(NEXT_NAME, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _with_path(exc, os.path.join(location, NEXT_NAME)) from exc
        return True
    finally:
        os.close(dir_fd)
