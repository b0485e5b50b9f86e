"""A directory of sessions: listing, scanning and pruning them."""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from typing import Final, NamedTuple

import attrs

from . import _backend
from ._default_location import default_location
from ._lock_state import FileKey, NextFile, classify_lock
from ._naming import (
    CHECKPOINT_NAME,
    NEXT_NAME,
    is_session_name,
    is_tombstone_name,
    session_id,
)
from ._ordering import sort_key
from ._prune import PrunePolicy, plan_prune
from ._python_writer import read_lock_table
from ._session_info import SessionInfo, modified_at
from ._storage import SessionStorage, remove_tree

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _as_repository_location(value: str | os.PathLike[str] | None) -> str:
    if value is None:
        return SessionStorageRepository.get_default_location()
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(
            f"repository location must be str or os.PathLike[str], got {value!r}"
        )
    return path


_REPOSITORY_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class _Found(NamedTuple):
    """A session directory a listing found: its name and its own ``lstat``."""

    name: str
    st: os.stat_result


class _Listing(NamedTuple):
    """One pass over the repository directory."""

    sessions: list[_Found]
    """youngest first"""
    tombstones: list[str]
    """names of hidden leftovers of interrupted removals"""


def _open_repository(location: str) -> int | None:
    """The repository directory, open; None when it does not exist."""
    try:
        return os.open(location, _REPOSITORY_FLAGS)
    except FileNotFoundError:
        return None


def _list(dir_fd: int, *, tombstones: bool = False) -> _Listing:
    """The session directories in ``dir_fd``, youngest first, one ``lstat`` each.

    Only the entries the names select are stat'ed, relative to the open
    directory (no path walk per entry); a symlink or a file named like a
    session is left out. An entry that vanishes before its ``lstat`` is
    skipped; every other error is raised.
    """
    keyed = []
    graves = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            name = entry.name
            if is_session_name(name):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    # The key is total (names are unique): tuples sort by it alone.
                    keyed.append((sort_key(st.st_mtime_ns, name), name, st))
            elif (
                tombstones
                and is_tombstone_name(name)
                # d_type answers without a stat; a symlink is never followed.
                and entry.is_dir(follow_symlinks=False)
            ):
                graves.append(name)
    keyed.sort()
    return _Listing([_Found(name, st) for _, name, st in keyed], graves)


def _stat_or_none(path: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _checkpoint_size(name: str, dir_fd: int) -> int | None:
    """The size of the saved checkpoint of session ``name``; None when none was saved.

    The one place that knows which file holds a session's checkpoint: the
    replace layout's ``session``. A slotted layout (``session.slots``) is to be
    recognised here, and nowhere else, when it lands.
    """
    st = _stat_or_none(os.path.join(name, CHECKPOINT_NAME), dir_fd)
    return None if st is None else st.st_size


def _look_at_next(name: str, dir_fd: int) -> NextFile | None:
    st = _stat_or_none(os.path.join(name, NEXT_NAME), dir_fd)
    return None if st is None else NextFile(st.st_ino, st.st_ctime_ns)


def _file_key(st: os.stat_result) -> FileKey:
    return FileKey(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)


def _inspect(location: str, dir_fd: int, found: list[_Found]) -> list[SessionInfo]:
    """What a scan reports about ``found`` in the repository ``dir_fd``, in order.

    The lock probe of ``lock_state()`` done in bulk: every ``session.next`` is
    looked at, then the kernel's lock table is read once for all sessions, then
    the ``session.next`` files seen on the first look are looked at again, and
    ``classify_lock`` decides as it does for one session. (A file that appears
    only after the table was read belongs to a save that started after it: the
    session was unlocked at that moment, and that is what the scan reports.)
    Where the table cannot tell, the session gets the backend's own probe.
    A session that vanishes while it is inspected is left out.
    """
    firsts = []
    for name, st in found:
        try:
            size = _checkpoint_size(name, dir_fd)
            before = _look_at_next(name, dir_fd)
        except NotADirectoryError:
            continue  # replaced by a file since it was listed
        if size is None and before is None and _stat_or_none(name, dir_fd) is None:
            continue  # no checkpoint because there is no session any more
        firsts.append((name, st, size, before))
    table = read_lock_table()
    prefix = os.path.join(location, "")
    infos = []
    for name, st, size, before in firsts:
        held = None if table is None else table.holds(_file_key(st))
        if held is None:
            try:
                lock = _backend.active.current.lock_state(prefix + name)
            except FileNotFoundError:
                continue
        else:
            after = None if before is None or held else _look_at_next(name, dir_fd)
            lock = classify_lock(held=held, next_before=before, next_after=after)
        infos.append(
            SessionInfo(
                id=session_id(name),
                location=prefix + name,
                modified=modified_at(st.st_mtime_ns),
                checkpoint_size=size,
                lock=lock,
            )
        )
    return infos


def describe(location: str) -> SessionInfo:
    """What a scan would report about the one session at ``location``.

    FileNotFoundError naming the location when there is no session there
    (nothing, a symlink, or not a directory).
    """
    parent, name = os.path.split(location)
    dir_fd = _open_repository(parent or os.curdir)
    if dir_fd is not None:
        try:
            st = _stat_or_none(name, dir_fd)
            if st is not None and stat.S_ISDIR(st.st_mode):
                infos = _inspect(parent, dir_fd, [_Found(name, st)])
                if infos:
                    return infos[0]
        finally:
            os.close(dir_fd)
    raise FileNotFoundError(errno.ENOENT, "no session directory", location)


def _remove_unless_held(info: SessionInfo) -> bool:
    """Remove the session unless a writer holds it; whether it was removed.

    The directory's flock is held across the removal, so a writer that starts
    a save meanwhile fails with a held lock, and one that comes after finds
    its session gone: no save is ever acknowledged into a session being
    removed. False when a writer got there first or the session is gone.
    """
    try:
        dir_fd = os.open(info.location, _DIR_FLAGS)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        SessionStorage(info.location).remove()
        return True
    finally:
        os.close(dir_fd)


@attrs.frozen
class SessionStorageRepository:
    """The sessions kept in one directory; ``None`` means the default location."""

    location: str = attrs.field(default=None, converter=_as_repository_location)

    @staticmethod
    def get_default_location() -> str:
        """``$PLAINBOX_SESSION_REPOSITORY`` (absolute), else the XDG cache path."""
        return default_location(os.environ, os.path.expanduser("~"), os.getcwd())

    def get_storage_list(self) -> list[SessionStorage]:
        """The sessions here, youngest first by directory mtime.

        Only real, non-hidden directories named ``*.session`` count; symlinks
        are not followed. A missing repository gives ``[]``; an entry that
        vanishes while listing is skipped; any other error is raised.
        """
        dir_fd = _open_repository(self.location)
        if dir_fd is None:
            return []
        try:
            found = _list(dir_fd).sessions
        finally:
            os.close(dir_fd)
        prefix = os.path.join(self.location, "")
        return [SessionStorage(prefix + name) for name, _ in found]

    def __iter__(self) -> Iterator[SessionStorage]:
        return iter(self.get_storage_list())

    def scan(self) -> list[SessionInfo]:
        """Every session here with its time, checkpoint size and lock, youngest first.

        The listing of ``get_storage_list()``, plus two ``stat`` calls per
        session and one read of the kernel's lock table for the whole scan.
        A missing repository gives ``[]``.
        """
        dir_fd = _open_repository(self.location)
        if dir_fd is None:
            return []
        try:
            return _inspect(self.location, dir_fd, _list(dir_fd).sessions)
        finally:
            os.close(dir_fd)

    def prune(
        self,
        *,
        keep: int | None = None,
        older_than: datetime.timedelta | None = None,
        dry_run: bool = False,
    ) -> list[SessionInfo]:
        """Remove old sessions; the ones removed (or, on a dry run, to be removed).

        ``keep=N`` spares the N youngest sessions, ``older_than`` spares those
        modified more recently than that; with both, a session goes only when
        both allow it (see ``PrunePolicy``). Neither is a ValueError: no prune
        wipes a repository by accident. A session held by a live writer is
        never removed, not even one a writer starts saving into while the
        prune runs, and does not count towards ``keep``.

        Removal is the crash-safe ``SessionStorage.remove()``. A prune also
        deletes the hidden tombstones that removals interrupted by a crash
        left behind; they are no sessions, so they are not in the answer. A dry
        run touches nothing.
        """
        policy = PrunePolicy(keep=keep, older_than=older_than)
        dir_fd = _open_repository(self.location)
        if dir_fd is None:
            return []
        try:
            listing = _list(dir_fd, tombstones=not dry_run)
            doomed = plan_prune(
                _inspect(self.location, dir_fd, listing.sessions),
                datetime.datetime.now(datetime.timezone.utc),
                policy,
            )
        finally:
            os.close(dir_fd)
        if dry_run:
            return doomed
        for name in listing.tombstones:
            remove_tree(os.path.join(self.location, name))
        return [info for info in doomed if _remove_unless_held(info)]
