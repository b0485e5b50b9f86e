"""A session held open and locked across saves, for harnesses that checkpoint often."""

from __future__ import annotations

import os
import threading
import weakref
from types import TracebackType
from typing import TYPE_CHECKING

from . import _backend, _fork_guard
from ._checkpoint_data import as_checkpoint_bytes
from ._options import Layout
from ._save_plan import plan_hold
from ._shield import shielded

if TYPE_CHECKING:
    from ._storage import SessionStorage


class HeldSession:
    """A session whose directory stays open and locked from ``storage.hold()`` to
    ``close()``, so each save skips opening, locking and closing it.

    A save of a session held in the slotted layout is, after the first, an
    ``fstat`` of the directory (removed meanwhile?), one ``pwritev`` and one
    ``fdatasync``: nobody else writes while the lock is held, so the writer
    knows which slot to overwrite without reading. Saves
    are as atomic and durable as ``SessionStorage.save_checkpoint``'s, on the
    same files; a failed save raises and leaves the session held, with its last
    good checkpoint in place.

    While held, the session's lock is held by a live writer: ``lock_state()``
    says ``HELD``, saves through any other storage or process raise
    ``LockedStorageError``, and ``prune`` spares the session. Closing (the end
    of a ``with`` block, collection, interpreter exit, or the process's death)
    releases it. ``remove()`` does not take the lock: removing a held session
    is the caller's choice to make, and a save after it raises
    FileNotFoundError. A child forked while a session is held does not hold
    it: a fork waits for a save in flight to end (saves, ``hold()`` and
    ``close()`` are shielded calls, see ``_shield``), the child closes its
    copies of the files (the parent's lock stays), and its saves raise
    ValueError.
    """

    __slots__ = (
        "__weakref__",
        "_finalizer",
        "_pid",
        "_saving",
        "_storage",
        "_writer",
    )

    def __init__(self, storage: SessionStorage) -> None:
        # No fork between taking the lock and knowing about it.
        shielded(self._hold, storage)

    def _hold(self, storage: SessionStorage) -> None:
        plan = plan_hold(storage.durability, storage.layout)
        writer = _backend.active.current.HeldWriter(
            storage.absolute_location,
            plan.acquire.codes,
            plan.save.codes,
            plan.rebuild.codes,
            plan.release.codes,
            storage.layout is Layout.SLOTTED,
        )
        self._storage = storage
        self._writer: _backend.HeldWriter = writer
        self._pid = os.getpid()
        # Serialises the saves of several threads, and close() with them.
        # Re-entrant: a finalizer may close while its thread is in a save.
        self._saving = threading.RLock()
        self._finalizer = weakref.finalize(self, _close_writer, writer)
        _live_sessions.add(self)
        _open_writers[id(writer)] = writer

    @property
    def storage(self) -> SessionStorage:
        """The storage this session saves to."""
        return self._storage

    @property
    def closed(self) -> bool:
        """Whether the session was released."""
        return self._writer.closed

    def save_checkpoint(self, data: bytes | bytearray | memoryview) -> None:
        """Replace the checkpoint with ``data``, as ``SessionStorage.save_checkpoint``.

        TypeError for data that is not bytes-like, before touching the disk;
        ValueError once the session was released. A bytearray or memoryview is
        copied first: changed by another thread during the write, it would
        leave a record that fails its checksum, and a held slotted session,
        which does not read back what it wrote, would take it for its newest.
        """
        shielded(self._save, as_checkpoint_bytes(data))

    def _save(self, data: bytes) -> None:
        with self._saving:
            self._writer.save(data)

    def load_checkpoint(self) -> bytes:
        """The last saved checkpoint (``SessionStorage.load_checkpoint``)."""
        return self._storage.load_checkpoint()

    def close(self) -> None:
        """Release the session: close its files, which releases the lock. Idempotent."""
        shielded(self._close)

    def _close(self) -> None:
        with self._saving:
            self._finalizer()

    def __enter__(self) -> HeldSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "held"
        return f"<HeldSession {self._storage.location!r} {state}>"

    def _orphan(self) -> None:
        """In a forked child: refuse saves (the child closed its copies of the
        files already, which leaves the parent's lock alone)."""
        self._finalizer.detach()
        self._writer = _Forked(self._storage.location, self._pid)


class _Forked:
    """The writer of a held session a forked child inherited: it refuses saves."""

    __slots__ = ("_location", "_parent")

    def __init__(self, location: str, parent: int) -> None:
        self._location = location
        self._parent = parent

    @property
    def closed(self) -> bool:
        return True

    def save(self, data: bytes | bytearray | memoryview) -> None:
        raise ValueError(
            f"held session {self._location} belongs to process {self._parent}, "
            "not to this fork of it"
        )

    def close(self) -> None:
        pass

    def forget(self) -> None:
        pass


_live_sessions: weakref.WeakSet[HeldSession] = weakref.WeakSet()
# Every writer not closed yet, by id: also those of sessions being collected,
# which have left _live_sessions before their finalizer closes the writer.
_open_writers: dict[int, _backend.HeldWriter] = {}


def _close_writer(writer: _backend.HeldWriter) -> None:
    # Not shielded: the collector may run this anywhere, a fork hook included.
    # A fork in the instant a collected session's writer closes leaves the
    # child with copies of its files until the child exits or execs.
    try:
        writer.close()
    finally:
        _open_writers.pop(id(writer), None)


def _orphan_sessions_in_child() -> None:
    """No save was in flight at the fork (they are shielded calls): close the
    child's copies of every held session's files, and refuse its saves."""
    while _open_writers:
        _open_writers.popitem()[1].forget()
    for session in list(_live_sessions):
        session._orphan()


_fork_guard.subscribe(after_in_child=_orphan_sessions_in_child)
