"""Listing a session repository in Python: the fallback of the native listing.

Same answers as ``sessionstore._native.list_sessions`` and ``scan_sessions``
(tested side by side): one pass over the directory, one ``lstat`` per session,
relative to the open repository so no path is walked twice, youngest first by
``_ordering.sort_key``. An entry that vanishes meanwhile is left out; a missing
repository is None; every other error is raised, naming its path.
"""

from __future__ import annotations

import os
import stat
from operator import itemgetter
from typing import Final, TypeAlias

from ._naming import CHECKPOINT_NAME, NEXT_NAME, is_session_name, is_tombstone_name
from ._ordering import sort_key

ScannedSession: TypeAlias = tuple[
    str, int, int, int, int | None, int | None, int | None
]
"""``(name, mtime_ns, st_dev, st_ino, checkpoint_size, next_ino, next_ctime_ns)``"""

_REPOSITORY_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _with_path(exc: OSError, location: str, path: str) -> OSError:
    """The same error (same errno, so the same subclass) naming the full path."""
    return OSError(
        exc.errno, exc.strerror, os.path.join(location, path) if path else location
    )


def _look(location: str, dir_fd: int, path: str) -> os.stat_result | None:
    """``lstat`` of ``path`` in the repository; None when the entry is not there.

    ENOTDIR counts as not there: a session replaced by a file has no checkpoint.
    Any other error is raised naming the full path.
    """
    try:
        return os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise _with_path(exc, location, path) from exc


def _listed(
    location: str, dir_fd: int, *, tombstones: bool
) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
    """The session directories, youngest first, and (if asked) the tombstones."""
    keyed = []
    graves = []
    try:
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                name = entry.name
                if is_session_name(name):
                    # d_type rules out files and symlinks without a stat.
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    st = _look(location, dir_fd, name)
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        keyed.append((sort_key(st.st_mtime_ns, name), st))
                elif (
                    tombstones
                    and is_tombstone_name(name)
                    and entry.is_dir(follow_symlinks=False)
                ):
                    graves.append(name)
    except OSError as exc:
        if isinstance(exc.filename, str):
            raise  # from _look, which named the entry
        raise _with_path(exc, location, "") from exc
    # The key holds the name, so it is total and the stats are never compared.
    keyed.sort(key=itemgetter(0))
    return [(key[1], st) for key, st in keyed], graves


def _checkpoint_size(location: str, dir_fd: int, name: str) -> int | None:
    """The size of session ``name``'s replace-layout checkpoint, or None.

    The one place of this backend that knows which file holds a checkpoint
    (the native one: ``detail`` in rust/listing.rs): ``session``, which a stat
    sizes. A slotted session reads as None here; the repository's scan then
    sizes it from its newest valid record, which takes a read. A ``session``
    that is not a regular file (a directory, a symlink) holds nothing a load
    returns, so it has no size either.
    """
    checkpoint = _look(location, dir_fd, os.path.join(name, CHECKPOINT_NAME))
    if checkpoint is None or not stat.S_ISREG(checkpoint.st_mode):
        return None
    return checkpoint.st_size


def _scanned(
    location: str, dir_fd: int, name: str, st: os.stat_result
) -> ScannedSession | None:
    """What a scan reports about one listed session; None when it vanished."""
    size = _checkpoint_size(location, dir_fd, name)
    next_file = _look(location, dir_fd, os.path.join(name, NEXT_NAME))
    if size is None and next_file is None and _look(location, dir_fd, name) is None:
        return None
    return (
        name,
        st.st_mtime_ns,
        st.st_dev,
        st.st_ino,
        size,
        None if next_file is None else next_file.st_ino,
        None if next_file is None else next_file.st_ctime_ns,
    )


def _open(location: str) -> int | None:
    try:
        return os.open(location, _REPOSITORY_FLAGS)
    except FileNotFoundError:
        return None


def list_sessions(location: str) -> list[str] | None:
    """The names of the sessions in ``location``, youngest first."""
    dir_fd = _open(location)
    if dir_fd is None:
        return None
    try:
        return [name for name, _ in _listed(location, dir_fd, tombstones=False)[0]]
    finally:
        os.close(dir_fd)


def scan_sessions(location: str) -> tuple[list[ScannedSession], list[str]] | None:
    """The sessions in ``location`` with their stat data, and the tombstones' names.

    For each session the checkpoint's size and a first look at ``session.next``
    (its inode and change time), as the lock probe needs it.
    """
    dir_fd = _open(location)
    if dir_fd is None:
        return None
    try:
        listed, graves = _listed(location, dir_fd, tombstones=True)
        scanned = [_scanned(location, dir_fd, name, st) for name, st in listed]
    finally:
        os.close(dir_fd)
    return [s for s in scanned if s is not None], graves


def scan_session(location: str) -> ScannedSession | None:
    """What ``scan_sessions`` reports about the one session at ``location``.

    None when there is no session directory there.
    """
    parent, name = os.path.split(location)
    dir_fd = _open(parent or os.curdir)
    if dir_fd is None:
        return None
    try:
        st = _look(parent, dir_fd, name)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return None
        return _scanned(parent, dir_fd, name, st)
    finally:
        os.close(dir_fd)
