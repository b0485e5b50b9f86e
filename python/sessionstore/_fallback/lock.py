"""The lock of a session, probed and broken in Python, as the native ``lock`` does."""

from __future__ import annotations

import fcntl
import os

from .._lock_state import LOCK_STATE_CODES, FileKey, NextFile, classify_lock
from .._naming import NEXT_NAME
from .posix import DIR_FLAGS, read_lock_table, try_lock, with_path


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


def lock_state(location: str) -> int:
    """The lock of the session at ``location``, as its index in
    ``LOCK_STATE_CODES``; FileNotFoundError when it is missing."""
    try:
        dir_fd = os.open(location, DIR_FLAGS)
    except OSError as exc:
        raise with_path(exc, location) from exc
    try:
        before = _look_at_next(dir_fd)
        held = _held(dir_fd, next_exists=before is not None)
        after = before if held else _look_at_next(dir_fd)
        state = classify_lock(held=held, next_before=before, next_after=after)
        return LOCK_STATE_CODES.index(state)
    except OSError as exc:
        raise with_path(exc, location) from exc
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
        raise with_path(exc, location) from exc
    try:
        try:
            if not try_lock(dir_fd):
                return False
        except OSError as exc:
            raise with_path(exc, location) from exc
        try:
            # Looked up first: a read-only filesystem refuses an unlink with
            # EROFS before it looks the name up; nothing to break is no error.
            if _look_at_next(dir_fd) is None:
                return False
            os.unlink(NEXT_NAME, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise with_path(exc, os.path.join(location, NEXT_NAME)) from exc
        return True
    finally:
        os.close(dir_fd)
