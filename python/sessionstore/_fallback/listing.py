"""Listing a session repository in Python: the fallback of the native listing.

Same answers as ``sessionstore._native.list_sessions`` and ``scan_sessions``
(tested side by side): one pass over the directory, one ``lstat`` per session,
relative to the open repository so no path is walked twice, youngest first by
``_ordering.sort_key``. An entry that vanishes meanwhile is left out; a missing
repository is None; every other error is raised, naming its path.
"""

from __future__ import annotations

import errno
import os
import stat
import zlib
from operator import itemgetter
from typing import Final, TypeAlias

from .._errors import CorruptCheckpointError
from .._naming import (
    CHECKPOINT_FILES,
    CHECKPOINT_NAME,
    NEXT_NAME,
    SLOTS_NAME,
    is_session_name,
    is_tombstone_name,
)
from .._ordering import sort_key
from .._session_contents import EntryKind
from .._slots_format import RECORD_HEADER_SIZE, newest_first, newest_plausible_length
from .posix import DIR_FLAGS, NOT_REGULAR, READ_FLAGS, with_path
from .slotted import read_view

ScannedCheckpoint: TypeAlias = tuple[str, int, int, int | None, int | None]
"""``(file name, st_mode, errno, size, mtime_ns)`` of the file holding a checkpoint.

``errno`` is 0, or the error of looking at or reading the file (``st_mode`` 0
when even its ``lstat`` failed). ``size`` is that of the checkpoint a load
returns as far as the file's headers tell: a regular ``session``'s size, or
the length of the newest record of a ``session.slots`` whose header is whole
and whose data lies within the file; None when there is none.
"""

ScannedSession: TypeAlias = tuple[
    str,
    int,
    int,
    int,
    int | None,
    int | None,
    int,
    list[tuple[str, int]],
    ScannedCheckpoint | None,
]
"""``(name, mtime_ns, st_dev, st_ino, next_ino, next_ctime_ns, errno, entries,
checkpoint)``: ``errno`` is 0 or the error of reading the session directory
(whose ``entries``, ``(name, EntryKind)``, are then empty); ``checkpoint`` is
None when the directory holds no checkpoint file."""

# The repository itself may be reached through a symlink (a session never).
_REPOSITORY_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


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
        raise with_path(exc, os.path.join(location, path)) from exc


def _listed(
    location: str, dir_fd: int, *, tombstones: bool
) -> tuple[list[tuple[str, os.stat_result]], list[tuple[str, os.stat_result]]]:
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
                    st = _look(location, dir_fd, name)
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        graves.append((name, st))
    except OSError as exc:
        if isinstance(exc.filename, str):
            raise  # from _look, which named the entry
        raise with_path(exc, location) from exc
    # The key holds the name, so it is total and the stats are never compared.
    keyed.sort(key=itemgetter(0))
    return [(key[1], st) for key, st in keyed], graves


def _entry_kind(entry: os.DirEntry[str]) -> EntryKind:
    if entry.is_dir(follow_symlinks=False):
        return EntryKind.DIRECTORY
    if entry.is_file(follow_symlinks=False):
        return EntryKind.FILE
    return EntryKind.OTHER


def _slots_size(session_fd: int) -> tuple[int, int, int | None]:
    """``(st_mode, errno, size)`` of ``session.slots`` from its headers alone.

    Two small reads whatever the checkpoint's size; a record whose data would
    end past the file's end has no size (the file is damaged).
    """
    try:
        fd = os.open(SLOTS_NAME, READ_FLAGS, dir_fd=session_fd)
    except OSError as exc:
        return 0, exc.errno or 0, None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return st.st_mode, 0, None
        try:
            view = read_view(fd, SLOTS_NAME)
        except CorruptCheckpointError:
            return st.st_mode, 0, None
        return (
            st.st_mode,
            0,
            newest_plausible_length(view.header, view.headers, st.st_size),
        )
    except OSError as exc:
        return 0, exc.errno or 0, None
    finally:
        os.close(fd)


def _checkpoint(session_fd: int, names: set[str]) -> ScannedCheckpoint | None:
    """The checkpoint file of the open session directory, as ``ScannedCheckpoint``.

    The one place of this backend that knows which file holds a checkpoint
    (the native one: ``checkpoint`` in rust/listing.rs): ``session`` where
    there is one (as a load decides), else ``session.slots``. A file that
    vanished since the listing (a conversion renamed the other in) makes way
    for the other name.
    """
    for name in CHECKPOINT_FILES:
        if name not in names:
            continue
        try:
            st = os.stat(name, dir_fd=session_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return name, 0, exc.errno or 0, None, None
        if not stat.S_ISREG(st.st_mode):
            return name, st.st_mode, 0, None, st.st_mtime_ns
        if name == CHECKPOINT_NAME:
            return name, st.st_mode, 0, st.st_size, st.st_mtime_ns
        mode, error, size = _slots_size(session_fd)
        return name, mode or st.st_mode, error, size, st.st_mtime_ns
    return None


def _scanned(
    location: str, dir_fd: int, name: str, st: os.stat_result
) -> ScannedSession | None:
    """What a scan reports about one listed session; None when it vanished.

    An error reading inside the session is that session's (reported in the
    tuple), never the listing's.
    """
    found = (name, st.st_mtime_ns, st.st_dev, st.st_ino)
    try:
        session_fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return (*found, None, None, exc.errno or 0, [], None)
    try:
        try:
            with os.scandir(session_fd) as listing:
                entries = [(e.name, int(_entry_kind(e))) for e in listing]
        except OSError as exc:
            return (*found, None, None, exc.errno or 0, [], None)
        names = {entry[0] for entry in entries}
        next_file = None
        if NEXT_NAME in names:
            try:
                next_file = os.stat(NEXT_NAME, dir_fd=session_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            except OSError as exc:
                return (*found, None, None, exc.errno or 0, entries, None)
        return (
            *found,
            None if next_file is None else next_file.st_ino,
            None if next_file is None else next_file.st_ctime_ns,
            0,
            entries,
            _checkpoint(session_fd, names),
        )
    finally:
        os.close(session_fd)


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


def scan_sessions(
    location: str,
) -> tuple[list[ScannedSession], list[ScannedSession]] | None:
    """The sessions in ``location`` with their stat data, and the tombstones alike.

    For each, its entries, its checkpoint file and a first look at
    ``session.next`` (its inode and change time), as the lock probe needs it.
    """
    dir_fd = _open(location)
    if dir_fd is None:
        return None
    try:
        listed, graves = _listed(location, dir_fd, tombstones=True)
        scanned = [_scanned(location, dir_fd, name, st) for name, st in listed]
        buried = [_scanned(location, dir_fd, name, st) for name, st in graves]
    finally:
        os.close(dir_fd)
    return [s for s in scanned if s is not None], [s for s in buried if s is not None]


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


# How much of a record ``verified_slots_length`` holds in memory at a time.
_VERIFY_CHUNK: Final = 1 << 20


def verified_slots_length(path: str) -> int | None:
    """The length of the newest record of the slots file at ``path`` that
    passes its checksum, as a load would find it; None when none does.

    Opened so that a FIFO cannot block (refused as not a regular file, like a
    directory or a device), and read a chunk at a time up to the file's real
    size: a header claiming more than the file holds costs nothing, and no
    record is ever held whole in memory. Errors name ``path``.
    """
    fd = os.open(path, READ_FLAGS)
    try:
        return _verified_length(fd, path)
    except OSError as exc:
        # fstat and pread name no file; the caller needs the path.
        raise exc if exc.filename else with_path(exc, path) from exc
    finally:
        os.close(fd)


def _verified_length(fd: int, path: str) -> int | None:
    """``verified_slots_length`` of the open file ``fd``."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, NOT_REGULAR, path)
    try:
        view = read_view(fd, path)
    except CorruptCheckpointError:
        return None
    for slot in newest_first(view.headers):
        record = view.headers[slot]
        assert record is not None
        start = view.header.slot_offset(slot) + RECORD_HEADER_SIZE
        if start + record.length > st.st_size:
            continue
        crc = zlib.crc32(record.prefix)
        done = 0
        while done < record.length:
            chunk = os.pread(fd, min(_VERIFY_CHUNK, record.length - done), start + done)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            done += len(chunk)
        if done == record.length and crc == record.crc:
            return record.length
    return None
