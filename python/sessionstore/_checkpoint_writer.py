"""A background, coalescing saver: the harness hands checkpoints over and moves on.

A durable save costs a millisecond or more on a real disk; a harness that
checkpoints after every job should not wait for it. ``submit()`` only puts the
checkpoint in a one-place slot; a worker saves whatever is in the slot, one
save at a time, so a checkpoint superseded before its turn is never written
and the newest one always is.

Two workers behave alike, each running the save plan of the storage's layout:
the native extension's (a Rust thread, never holding the GIL) and the
fallback's (a ``threading`` one), from ``_fallback.checkpoint_worker``.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Final

from . import _backend, _fork_guard
from ._backend import Worker
from ._checkpoint_data import as_checkpoint_bytes
from ._options import Layout
from ._save_plan import plan_save, plan_slotted_save
from ._writer_stats import RawStats, WriterStats, writer_stats

if TYPE_CHECKING:
    from ._storage import SessionStorage

log = logging.getLogger("sessionstore")

# How long interpreter exit waits for an unclosed writer's last save: far above a
# save on a healthy disk, and finite so a hung disk cannot hang the exit forever.
_EXIT_WAIT: Final = 10.0


def _worker(storage: SessionStorage) -> Worker:
    """The active backend's worker, running the save plan of the storage's layout."""
    current = _backend.active.current
    if storage.layout is Layout.SLOTTED:
        slotted = plan_slotted_save(storage.durability)
        return current.CheckpointWorker.slotted(
            storage.absolute_location, slotted.in_place.codes, slotted.rebuild.codes
        )
    plan = plan_save(storage.durability)
    return current.CheckpointWorker(
        storage.absolute_location, plan.codes, plan.next_name, plan.target_name
    )


class _Forked:
    """The worker of a writer inherited by a forked child, where no thread runs it.

    The child saves nothing of the parent's and submits nothing of its own: its
    submissions are refused, and it has nothing to flush or close.
    """

    __slots__ = ("_location", "_parent")

    saves: Final = 0
    closed: Final = True

    def __init__(self, location: str, parent: int) -> None:
        self._location = location
        self._parent = parent

    def submit(self, data: bytes) -> None:
        raise ValueError(
            f"checkpoint writer of {self._location} belongs to process "
            f"{self._parent}, not to this fork of it"
        )

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def stop(self, timeout: float) -> bool:
        return True

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def stats(self) -> RawStats:
        return (0, 0, 0, 0, 0, None, ())


_live_writers: weakref.WeakSet[CheckpointWriter] = weakref.WeakSet()
# The workers paused for a fork in progress.
_paused: list[Worker] = []
# The workers forked children inherited. Never touched again: a lock their
# thread held at the fork stays held in the child for ever.
_inherited: list[Worker] = []


def _pause_writers_for_fork() -> None:
    """No save is in flight while the process forks.

    A save holds the session directory open and flock-ed; a child forking in
    the middle of it would inherit that descriptor and hold the lock for as long
    as it lives, so every later save of the parent would find it held.
    """
    for writer in list(_live_writers):
        writer._worker.pause()
        _paused.append(writer._worker)


def _resume_writers_in_parent() -> None:
    while _paused:
        _paused.pop().resume()


def _orphan_writers_in_child() -> None:
    _paused.clear()
    for writer in list(_live_writers):
        writer._orphan()


_fork_guard.subscribe(
    before=_pause_writers_for_fork,
    after_in_parent=_resume_writers_in_parent,
    after_in_child=_orphan_writers_in_child,
)


def _finish(worker: Worker) -> None:
    """Save what an unclosed writer still holds, at garbage collection or exit.

    Nobody is left to raise an error to, so a failure is logged, never dropped
    in silence.
    """
    if not worker.stop(_EXIT_WAIT):
        log.error("checkpoint writer still saving after %.0f s; giving up", _EXIT_WAIT)
        return
    try:
        worker.close()
    except Exception as error:
        log.error("checkpoint writer closed unflushed; its last save failed: %r", error)


class CheckpointWriter:
    """Saves the checkpoints of one storage in the background, newest first.

    - ``submit(data)`` returns at once. Nothing is durable yet: the checkpoint
      waits for the one save in flight, and a newer submission replaces it
      while it waits (latest wins). ``bytearray`` and ``memoryview`` data are
      copied, so the caller may reuse its buffer at once.
    - ``flush()`` returns once the last checkpoint submitted before it was
      called (or a newer one) is saved with the storage's durability.
    - ``close()`` flushes, then stops the worker; the ``with`` block calls it.

    The error of a background save is raised, with its own type, by the next
    ``submit``, ``flush`` or ``close``, once. The failed checkpoint and any
    that waited behind it are not saved; a ``submit`` that raises did not take
    its data; the storage keeps the last checkpoint saved before the failure.
    Submitting again after the error saves normally.

    A writer that is garbage collected or still open at interpreter exit gets
    its last checkpoint saved (exit waits at most ten seconds for it), and a
    failure then is logged, not raised. In a child forked from the process
    that made it, a writer is closed: its submissions are refused, and the
    parent alone saves what it submitted.
    """

    __slots__ = ("__weakref__", "_finalizer", "_pid", "_storage", "_worker")

    _worker: Worker

    def __init__(self, storage: SessionStorage) -> None:
        if "\0" in storage.location:
            # No save could ever name it; say so now rather than at the first flush.
            raise ValueError(
                f"embedded null byte in session location {storage.location!r}"
            )
        self._storage = storage
        self._pid = os.getpid()
        worker = _worker(storage)
        self._worker = worker
        self._finalizer = weakref.finalize(self, _finish, worker)
        _live_writers.add(self)

    def _orphan(self) -> None:
        """In a forked child: leave the parent's worker alone, and refuse work."""
        self._finalizer.detach()
        _inherited.append(self._worker)
        self._worker = _Forked(self._storage.location, self._pid)

    @property
    def storage(self) -> SessionStorage:
        """The storage this writer saves to."""
        return self._storage

    @property
    def saves(self) -> int:
        """How many saves ran (failed ones included); at most one per submission."""
        return self._worker.saves

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._worker.closed

    def stats(self) -> WriterStats:
        """What this writer has done so far: submissions, saves (and how many
        of them failed), checkpoints coalesced away, bytes saved, the latest
        save error, and the latency of the latest successful saves. Counted by
        the saving thread; ``submit()`` pays for nothing but one increment. In
        a forked child, all zero: the parent did the work."""
        return writer_stats(self._worker.stats())

    def submit(self, data: bytes | bytearray | memoryview) -> None:
        """Hand ``data`` over to be saved, replacing any checkpoint still waiting.

        TypeError for data that is not bytes-like and ValueError once the writer
        is closed, before anything is taken; the pending error of a background
        save, if any, instead of taking ``data``.
        """
        self._worker.submit(as_checkpoint_bytes(data))

    def flush(self) -> None:
        """Block until every checkpoint submitted so far is saved or superseded.

        Returns at once when nothing is pending (also after ``close()``); raises
        the error of a background save that has not been raised yet.
        """
        self._worker.flush()

    def close(self) -> None:
        """Flush, then stop the worker; later calls do nothing.

        The worker stops even when the flush raises; the error is raised after.
        """
        self._finalizer.detach()
        self._worker.close()

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close, saving the last checkpoint even when the block raised.

        A failure of that save never replaces the block's own exception: it is
        attached to it as a note (and logged, where notes do not exist).
        """
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception as close_error:
            note = f"and the last checkpoint was not saved: {close_error!r}"
            if sys.version_info >= (3, 11):
                exc.add_note(note)
            else:
                log.error("%s", note)
