"""The replace sequence: a save plan's steps executed in Python.

The same plan, the same syscalls as the native backend's ``save`` module.
"""

from __future__ import annotations

import errno
import os
from typing import Final

from .. import _errors
from .._save_plan import SaveStep
from .posix import DIR_FLAGS, try_lock, with_path

_NEXT_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_NEXT_MODE: Final = 0o600

_OPEN_DIR: Final = SaveStep.OPEN_DIR.value
_LOCK_DIR: Final = SaveStep.LOCK_DIR.value
_CREATE_NEXT: Final = SaveStep.CREATE_NEXT.value
_WRITE_NEXT: Final = SaveStep.WRITE_NEXT.value
_FSYNC_NEXT: Final = SaveStep.FSYNC_NEXT.value
_CLOSE_NEXT: Final = SaveStep.CLOSE_NEXT.value
_RENAME_NEXT: Final = SaveStep.RENAME_NEXT.value
_FSYNC_DIR: Final = SaveStep.FSYNC_DIR.value
_CLOSE_DIR: Final = SaveStep.CLOSE_DIR.value


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
                failure = with_path(exc, next_path, os.path.join(location, target))
            else:
                failure = with_path(exc, path)
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
