"""A directory of sessions: listing, scanning and pruning them."""

from __future__ import annotations

import datetime
import errno
import logging
import os
import stat
from collections.abc import Iterator
from typing import Final

import attrs

from . import _backend
from ._default_location import default_location
from ._fallback.listing import (
    ScannedCheckpoint,
    ScannedSession,
    scan_session,
    verified_slots_length,
)
from ._fallback.posix import read_lock_table, try_lock
from ._lock_holder import find_holder
from ._lock_state import (
    LOCK_STATE_CODES,
    FileKey,
    LockState,
    LockTable,
    NextFile,
    classify_lock,
)
from ._naming import (
    CHECKPOINT_FILES,
    NEXT_NAME,
    SLOTS_NAME,
    session_id,
)
from ._ordering import sort_key
from ._prune import PrunePolicy, plan_prune
from ._session_contents import RECOGNISED, tombstone_origin
from ._session_info import CheckpointStatus, SessionInfo, file_kind, modified_at
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


def checkpoint_mtime_ns(dir_fd: int) -> int | None:
    """When the open session directory's checkpoint was last saved, or None.

    The mtime of ``session`` (a replace save renames a freshly written file
    in) or else ``session.slots`` (an in-place slotted save writes into it):
    the age ``scan()`` reports, which housekeeping in the directory never
    changes.
    """
    for name in CHECKPOINT_FILES:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime_ns
        except FileNotFoundError:
            continue
    return None


def checkpoint_state(
    checkpoint: ScannedCheckpoint | None,
) -> tuple[CheckpointStatus, int | None, str | None]:
    """The status, size and problem a scan reports for what the backend found."""
    if checkpoint is None:
        return CheckpointStatus.NEVER_SAVED, None, None
    name, mode, error, size, _ = checkpoint
    if error:
        return CheckpointStatus.UNREADABLE, None, f"{name}: {os.strerror(error)}"
    if not stat.S_ISREG(mode):
        return CheckpointStatus.UNREADABLE, None, f"{name} is {file_kind(mode)}"
    if size is None:
        return (
            CheckpointStatus.DAMAGED,
            None,
            f"{name}: no record with a whole header lies within the file",
        )
    return CheckpointStatus.SAVED, size, None


def _lock_of(
    session: str, table: LockTable | None, key: FileKey, before: NextFile | None
) -> LockState:
    """The lock probe of ``lock_state()``, with the lock table read once for a
    whole scan (see ``_inspect``). FileNotFoundError when the session vanished;
    UNKNOWN when this process may not look into it."""
    held = None if table is None else table.holds(key)
    # "Free" beside a session.next would make it STALE; the table is read
    # a page at a time and can miss a holder, so lock_state() tries it.
    if held is None or (not held and before is not None):
        try:
            return LOCK_STATE_CODES[_backend.active.current.lock_state(session)]
        except PermissionError:
            return LockState.UNKNOWN
    after = None if before is None or held else _look_at_next(session)
    return classify_lock(held=held, next_before=before, next_after=after)


def _info(
    prefix: str, scanned: ScannedSession, table: LockTable | None
) -> tuple[int, SessionInfo] | None:
    """One scanned session as ``SessionInfo``, with its age in ns; None when it
    vanished while it was inspected."""
    name, dir_mtime_ns, dev, ino, next_ino, next_ctime_ns, error, entries, found = (
        scanned
    )
    session = prefix + name
    before = None
    if next_ino is not None and next_ctime_ns is not None:
        before = NextFile(next_ino, next_ctime_ns)
    key = FileKey(os.major(dev), os.minor(dev), ino)
    if error:
        # Nothing inside could be seen: only a holder the table shows is known.
        held = table is not None and table.holds(key) is True
        lock = LockState.HELD if held else LockState.UNKNOWN
        status, size = CheckpointStatus.UNREADABLE, None
        problem: str | None = f"session directory: {os.strerror(error)}"
    else:
        try:
            lock = _lock_of(session, table, key, before)
        except FileNotFoundError:
            return None
        status, size, problem = checkpoint_state(found)
    mtime_ns = dir_mtime_ns
    if found is not None and found[4] is not None:
        mtime_ns = found[4]
    # A session's name never starts with a dot; a tombstone's always does.
    leftover = tombstone_origin(name) if name.startswith(".") else None
    info = SessionInfo(
        id=session_id(name if leftover is None else leftover),
        location=session,
        modified=modified_at(mtime_ns),
        checkpoint_size=size,
        lock=lock,
        checkpoint=status,
        problem=problem,
        unrecognised=RECOGNISED.unrecognised(entries),
        leftover=leftover is not None,
    )
    return mtime_ns, info


def _inspect(
    location: str, scanned: list[ScannedSession], table: LockTable | None
) -> list[SessionInfo]:
    """What a scan reports about the sessions the backend ``scanned``, youngest first.

    The lock probe of ``lock_state()`` done in bulk: the backend looked at every
    ``session.next``, then the kernel's lock ``table`` was read once for all
    sessions, then the ``session.next`` files seen on the first look are looked
    at again, and ``classify_lock`` decides as it does for one session. (A file
    that appears only after the table was read belongs to a save that started
    after it: the session was unlocked at that moment, which the scan reports.)
    Where the table cannot tell, the session gets the backend's own probe.
    A session that vanishes while it is inspected is left out; one that cannot
    be read is reported as such (``CheckpointStatus.UNREADABLE``, its
    ``problem`` saying why), never an error of the whole scan.
    """
    found = []
    prefix = os.path.join(location, "")
    for entry in scanned:
        inspected = _info(prefix, entry, table)
        if inspected is not None:
            mtime_ns, info = inspected
            found.append((sort_key(mtime_ns, entry[0]), info))
    # Ages come from the checkpoint files, the backend's order from the directories.
    found.sort(key=lambda keyed: keyed[0])
    return [info for _, info in found]


def _verified(info: SessionInfo, held_in: str | None) -> SessionInfo:
    """``info`` with a slotted checkpoint's newest record checked as a load does.

    A listing reads only the headers; ``show`` reads the record too and
    reports a checkpoint no load returns as damaged. Read through a descriptor
    that cannot block (O_NONBLOCK, a regular file checked by fstat) and a
    bounded buffer: a FIFO is refused, and a record is never held whole in
    memory nor read past the file's real size. A session whose checkpoint is
    ``session`` (which a load prefers, even beside a slots file) needs nothing
    more than its size.
    """
    if info.checkpoint is not CheckpointStatus.SAVED or held_in != SLOTS_NAME:
        return info
    path = os.path.join(info.location, SLOTS_NAME)
    try:
        length = verified_slots_length(path)
    except FileNotFoundError:
        return info  # the replace layout, or converted meanwhile
    except OSError as exc:
        problem = f"{SLOTS_NAME}: {exc.strerror}"
        return attrs.evolve(
            info,
            checkpoint=CheckpointStatus.UNREADABLE,
            checkpoint_size=None,
            problem=problem,
        )
    if length is None:
        return attrs.evolve(
            info,
            checkpoint=CheckpointStatus.DAMAGED,
            checkpoint_size=None,
            problem=f"{SLOTS_NAME}: no record passes its checksum",
        )
    return attrs.evolve(info, checkpoint_size=length)


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
    """What a scan would report about the one session at ``location``, with a
    slotted checkpoint's newest record verified as a load would.

    FileNotFoundError naming the location when there is no session there
    (nothing, a symlink, or not a directory).
    """
    scanned = scan_session(location)
    if scanned is not None:
        infos = _with_holders(
            _inspect(os.path.dirname(location), [scanned], read_lock_table())
        )
        if infos:
            checkpoint = scanned[8]
            return _verified(infos[0], None if checkpoint is None else checkpoint[0])
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
        changed = checkpoint_mtime_ns(dir_fd)
        if changed is None:
            changed = os.fstat(dir_fd).st_mtime_ns
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

    def _scan(self) -> tuple[list[SessionInfo], list[SessionInfo]]:
        scanned = _backend.active.current.scan_sessions(self.location)
        if scanned is None:
            return [], []
        sessions, tombstones = scanned
        table = read_lock_table()
        return (
            _with_holders(_inspect(self.location, sessions, table)),
            _inspect(self.location, tombstones, table),
        )

    def scan(self) -> list[SessionInfo]:
        """Every session here with its age, checkpoint and lock, youngest first.

        The listing of ``get_storage_list()``, plus a look into each session
        (its entries, the ``stat`` of its checkpoint and ``session.next``, and
        for a slotted one the file's headers: two small reads whatever its
        size, no record's data) and one read of the kernel's lock table for
        the whole scan. The age is that of the last checkpoint (see
        ``SessionInfo``), so the order may differ from ``get_storage_list()``'s.
        A session that cannot be read is in the answer, saying why; a missing
        repository gives ``[]``.
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

        Only a directory the library recognises as a session is removed:
        every entry in it is one of the library's files or a client's
        directory (``SessionInfo.recognised``); anything else, and any session
        that cannot be read or whose lock is UNKNOWN, is left alone and does
        not count towards ``keep``.

        Removal is the crash-safe ``SessionStorage.remove()``. A prune also
        finishes the removals a crash interrupted: a hidden tombstone named
        exactly as a removal names it and holding only what a session holds
        is deleted whatever the policy (its session was removed already),
        and is in the answer with ``leftover`` set, on a dry run too. A dry
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
    leftovers = [t for t in tombstones if t.leftover and t.recognised]
    doomed = plan_prune(infos, datetime.datetime.now(datetime.timezone.utc), policy)
    if dry_run:
        yield from leftovers
        yield from doomed
        return
    failures: list[OSError] = []
    for leftover in leftovers:
        try:
            remove_tree(leftover.location)
        except OSError as exc:
            failures.append(exc)
            continue
        yield leftover
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
