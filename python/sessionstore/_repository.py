"""A directory of sessions: listing, scanning and pruning them."""

from __future__ import annotations

import datetime
import errno
import logging
import os
from collections.abc import Iterator
from typing import Final

import attrs

from . import _backend
from ._default_location import default_location
from ._errors import CorruptCheckpointError
from ._lock_holder import find_holder
from ._lock_state import FileKey, LockState, NextFile, classify_lock
from ._naming import NEXT_NAME, SLOTS_NAME, session_id
from ._ordering import sort_key
from ._prune import PrunePolicy, plan_prune
from ._python_listing import ScannedSession, scan_session
from ._python_writer import read_lock_table, try_lock
from ._session_info import SessionInfo, modified_at
from ._storage import SessionStorage, remove_tree

log = logging.getLogger("sessionstore")

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _as_repository_location(value: str | os.PathLike[str] | None) -> str:
    if value is None:
        return SessionStorageRepository.get_default_location()
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(
            f"repository location must be str or os.PathLike[str], got {value!r}"
        )
    if not path:
        raise ValueError("repository location must not be empty")
    return path


def _look_at_next(location: str) -> NextFile | None:
    try:
        st = os.stat(os.path.join(location, NEXT_NAME), follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return NextFile(st.st_ino, st.st_ctime_ns)


def _slots_mtime_ns(location: str, dir_fd: int | None = None) -> int | None:
    """When ``session.slots`` was last written, or None when there is none.

    A slotted save overwrites a slot in place and leaves the directory's mtime
    alone, so a slotted session is as young as its slots file.
    """
    try:
        st = os.stat(
            SLOTS_NAME if dir_fd is not None else os.path.join(location, SLOTS_NAME),
            dir_fd=dir_fd,
            follow_symlinks=False,
        )
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_mtime_ns


def _slotted_size(session: str) -> int | None:
    """The size of a slotted session's checkpoint: its newest valid record's.

    Read and checked like a load, so the size is that of what a load would
    return; None when there is no slots file or no record in it is whole.
    """
    try:
        newest = _backend.active.current.load_slots(
            os.path.join(session, SLOTS_NAME), False
        )
    except (FileNotFoundError, NotADirectoryError, CorruptCheckpointError):
        return None
    return None if newest is None else len(newest)


def last_change_ns(location: str, dir_mtime_ns: int, dir_fd: int | None = None) -> int:
    """When the session last changed: its directory's mtime or, for a slotted
    session saved in place since, its slots file's."""
    slots = _slots_mtime_ns(location, dir_fd)
    return dir_mtime_ns if slots is None else max(dir_mtime_ns, slots)


def _inspect(location: str, scanned: list[ScannedSession]) -> list[SessionInfo]:
    """What a scan reports about the sessions the backend ``scanned``, in order.

    The lock probe of ``lock_state()`` done in bulk: the backend looked at every
    ``session.next``, then the kernel's lock table is read once for all
    sessions, then the ``session.next`` files seen on the first look are looked
    at again, and ``classify_lock`` decides as it does for one session. (A file
    that appears only after the table was read belongs to a save that started
    after it: the session was unlocked at that moment, which the scan reports.)
    Where the table cannot tell, the session gets the backend's own probe.
    A session that vanishes while it is inspected is left out.
    """
    table = read_lock_table()
    prefix = os.path.join(location, "")
    found = []
    for name, mtime_ns, dev, ino, size, next_ino, next_ctime_ns in scanned:
        session = prefix + name
        before = None
        if next_ino is not None and next_ctime_ns is not None:
            before = NextFile(next_ino, next_ctime_ns)
        key = FileKey(os.major(dev), os.minor(dev), ino)
        held = None if table is None else table.holds(key)
        # "Free" beside a session.next would make it STALE; the table is read
        # a page at a time and can miss a holder, so lock_state() tries it.
        if held is None or (not held and before is not None):
            try:
                lock = _backend.active.current.lock_state(session)
            except FileNotFoundError:
                continue
        else:
            after = None if before is None or held else _look_at_next(session)
            lock = classify_lock(held=held, next_before=before, next_after=after)
        if size is None:
            size = _slotted_size(session)
        mtime_ns = last_change_ns(session, mtime_ns)
        info = SessionInfo(
            id=session_id(name),
            location=session,
            modified=modified_at(mtime_ns),
            checkpoint_size=size,
            lock=lock,
        )
        found.append((sort_key(mtime_ns, name), info))
    # A slotted session saved in place may be younger than its directory says.
    found.sort(key=lambda keyed: keyed[0])
    return [info for _, info in found]


def _with_holders(infos: list[SessionInfo]) -> list[SessionInfo]:
    """``infos`` with the holder of every HELD session looked up."""
    found = []
    for info in infos:
        if info.lock is LockState.HELD:
            try:
                info = attrs.evolve(info, holder=find_holder(info.location))
            except FileNotFoundError:
                continue
        found.append(info)
    return found


def describe(location: str) -> SessionInfo:
    """What a scan would report about the one session at ``location``.

    FileNotFoundError naming the location when there is no session there
    (nothing, a symlink, or not a directory).
    """
    scanned = scan_session(location)
    if scanned is not None:
        infos = _with_holders(_inspect(os.path.dirname(location), [scanned]))
        if infos:
            return infos[0]
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
        if not try_lock(dir_fd):
            return False
        # A save that finished between the scan and the lock made the session
        # young again: it is no longer the session the plan chose.
        changed = last_change_ns(info.location, os.fstat(dir_fd).st_mtime_ns, dir_fd)
        if modified_at(changed) != info.modified:
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
        names = _backend.active.current.list_sessions(self.location)
        if names is None:
            return []
        prefix = os.path.join(self.location, "")
        return [SessionStorage(prefix + name) for name in names]

    def __iter__(self) -> Iterator[SessionStorage]:
        return iter(self.get_storage_list())

    def _scan(self) -> tuple[list[SessionInfo], list[str]]:
        scanned = _backend.active.current.scan_sessions(self.location)
        if scanned is None:
            return [], []
        sessions, tombstones = scanned
        return _with_holders(_inspect(self.location, sessions)), tombstones

    def scan(self) -> list[SessionInfo]:
        """Every session here with its time, checkpoint size and lock, youngest first.

        The listing of ``get_storage_list()``, plus two ``stat`` calls per
        session and one read of the kernel's lock table for the whole scan.
        A missing repository gives ``[]``.
        """
        return self._scan()[0]

    def prune(
        self,
        *,
        keep: int | None = None,
        older_than: datetime.timedelta | None = None,
        max_total_size: int | None = None,
        dry_run: bool = False,
    ) -> list[SessionInfo]:
        """Remove old sessions; the ones removed (or, on a dry run, to be removed).

        ``keep=N`` spares the N youngest sessions, ``older_than`` spares those
        modified more recently than that; with both, a session goes only when
        both allow it; ``max_total_size`` (bytes) allows removing the oldest
        sessions, as few as bring the checkpoints' total size down to it, and
        combines with the others the same way (see ``PrunePolicy``). None of
        the three is a ValueError: no prune wipes a repository by accident.
        A session held by a live writer is never removed, not even one a
        writer starts saving into while the prune runs, and does not count
        towards ``keep``.

        Removal is the crash-safe ``SessionStorage.remove()``. A prune also
        deletes the hidden tombstones that removals interrupted by a crash
        left behind; they are no sessions, so they are not in the answer. A dry
        run touches nothing.

        One removal that fails stops none of the others: every one is tried,
        then the first failure is raised (naming its path) and the others are
        logged as errors to the ``sessionstore`` logger.
        """
        policy = PrunePolicy(
            keep=keep, older_than=older_than, max_total_size=max_total_size
        )
        return list(prune_sessions(self, policy, dry_run=dry_run))


def prune_sessions(
    repo: SessionStorageRepository, policy: PrunePolicy, *, dry_run: bool = False
) -> Iterator[SessionInfo]:
    """``repo.prune()`` one session at a time: each as it goes (or, on a dry run,
    as the plan names it), so a caller can report progress, and what went
    before a failure. After the last one, the first failure is raised and the
    others are logged."""
    infos, tombstones = repo._scan()
    doomed = plan_prune(infos, datetime.datetime.now(datetime.timezone.utc), policy)
    if dry_run:
        yield from doomed
        return
    failures: list[OSError] = []
    for name in tombstones:
        try:
            remove_tree(os.path.join(repo.location, name))
        except OSError as exc:
            failures.append(exc)
    for info in doomed:
        try:
            removed = _remove_unless_held(info)
        except OSError as exc:
            failures.append(exc)
            continue
        if removed:
            yield info
    if failures:
        for other in failures[1:]:
            log.error("prune could not remove %s: %s", other.filename, other)
        raise failures[0]
