"""A background, coalescing saver: the harness hands checkpoints over and moves on.

A durable save costs a millisecond or more on a real disk; a harness that
checkpoints after every job should not wait for it. ``submit()`` only puts the
checkpoint in a one-place slot; a worker saves whatever is in the slot, one
save at a time, so a checkpoint superseded before its turn is never written
and the newest one always is.

Two workers behave alike: the native extension's (a Rust thread running the
native save plan of the storage's layout, never holding the GIL) for the native
backend, and a ``threading`` one calling ``storage.save_checkpoint()`` for the
fallback.
"""

from __future__ import annotations

import collections
import copy
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol

from . import _backend
from ._options import Layout
from ._save_plan import plan_save, plan_slotted_save
from ._shield import signals_deferred, start_without_signals
from ._storage import as_checkpoint
from ._writer_stats import LATENCY_WINDOW, RawStats, WriterStats, writer_stats

if TYPE_CHECKING:
    from ._storage import SessionStorage

log = logging.getLogger("sessionstore")

# How long interpreter exit waits for an unclosed writer's last save: far above a
# save on a healthy disk, and finite so a hung disk cannot hang the exit forever.
_EXIT_WAIT: Final = 10.0
# How long a wait of the main thread goes with signals deferred: a signal's
# handler (Ctrl-C) runs at most this late, never while a lock is half taken.
_SIGNAL_CHECK: Final = 0.05


class _Worker(Protocol):
    """What the writer asks of a worker; both workers provide it alike."""

    @property
    def saves(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    def submit(self, data: bytes) -> None:
        """Take ``data``, or raise: ValueError once closed, else a pending error."""

    def flush(self) -> None:
        """Wait for the newest submission to settle; raise its save's error."""

    def close(self) -> None:
        """Flush, then end the thread; once closed, raise only a pending error."""

    def stop(self, timeout: float) -> bool:
        """Close without raising, letting the thread save what waits; wait up to
        ``timeout`` for it; whether it ended (or cannot be waited for)."""

    def pause(self) -> None:
        """Wait for a save in flight to end, and start none until ``resume``."""

    def resume(self) -> None:
        """Let the thread save again after ``pause``."""

    def stats(self) -> RawStats:
        """The counters ``writer_stats`` reads."""


class _Handoff:
    """What the submitting threads and the worker thread share, under ``changed``.

    Checkpoints are numbered in submission order. ``settled`` is the number of
    the newest checkpoint whose fate is known: saved (``durable``) or lost to a
    failed save. A failure drops the checkpoint waiting in the slot as well, and
    submissions are refused until the error has been raised to a caller, so no
    checkpoint is ever saved behind the back of an error nobody has seen.
    """

    __slots__ = (
        "bytes_saved",
        "changed",
        "closed",
        "coalesced",
        "durable",
        "error",
        "failures",
        "last_failure",
        "latencies",
        "paused",
        "saves",
        "saving",
        "settled",
        "stopping",
        "submitted",
        "waiting",
    )

    def __init__(self) -> None:
        # Reentrant: garbage collection may run the writer's finalizer on the
        # worker thread while it holds this lock.
        self.changed = threading.Condition(threading.RLock())
        self.waiting: bytes | None = None
        self.submitted = 0
        self.durable = 0
        self.settled = 0
        self.saves = 0
        self.failures = 0
        self.error: BaseException | None = None
        self.last_failure: BaseException | None = None
        self.closed = False
        self.stopping = False
        self.paused = False
        self.saving = False
        self.coalesced = 0
        self.bytes_saved = 0
        self.latencies: collections.deque[int] = collections.deque(
            maxlen=LATENCY_WINDOW
        )

    def take_error(self) -> BaseException | None:
        """The error nobody has seen yet, now counted as seen."""
        error, self.error = self.error, None
        return error


def _work(handoff: _Handoff, save: Callable[[bytes], None]) -> None:
    """Save whatever waits in the slot, one at a time, until told to stop.

    The slot is emptied before the save starts, so a submission during the
    save waits for the next turn instead of being lost. Stopping still saves
    what is waiting.
    """
    changed = handoff.changed
    while True:
        with changed:
            while not handoff.stopping and (handoff.waiting is None or handoff.paused):
                changed.wait()
            data = handoff.waiting
            if data is None:
                return
            number = handoff.submitted
            handoff.waiting = None
            handoff.saving = True
        started = time.perf_counter_ns()
        try:
            save(data)
        except BaseException as exc:
            with changed:
                handoff.saving = False
                handoff.saves += 1
                handoff.failures += 1
                handoff.error = handoff.last_failure = exc
                handoff.waiting = None
                handoff.settled = handoff.submitted
                changed.notify_all()
        else:
            took = time.perf_counter_ns() - started
            with changed:
                handoff.saving = False
                handoff.saves += 1
                handoff.bytes_saved += len(data)
                handoff.latencies.append(took)
                handoff.durable = number
                handoff.settled = max(handoff.settled, number)
                changed.notify_all()
        # The worker must not keep the last checkpoint alive while it idles.
        del data


class _ThreadedWorker:
    """The worker as a daemon thread calling ``storage.save_checkpoint()``."""

    __slots__ = ("_handoff", "_location", "_thread")

    def __init__(self, storage: SessionStorage) -> None:
        self._location = storage.location
        self._handoff = handoff = _Handoff()
        self._thread = threading.Thread(
            target=_work,
            args=(handoff, storage.save_checkpoint),
            name="sessionstore-writer",
            daemon=True,
        )
        # It runs no signal handler, so it takes none of the process's signals.
        start_without_signals(self._thread)

    @property
    def saves(self) -> int:
        return self._handoff.saves

    @property
    def closed(self) -> bool:
        return self._handoff.closed

    # Each method's work under the handoff's lock runs with signals deferred
    # (a handler's exception between taking and releasing the lock would leave
    # it taken, and every later call waiting for ever); waits go in slices of
    # _SIGNAL_CHECK so that a handler still runs while one lasts.

    def submit(self, data: bytes) -> None:
        error = signals_deferred(self._take, data)
        if error is not None:
            raise error

    def _take(self, data: bytes) -> BaseException | None:
        handoff = self._handoff
        with handoff.changed:
            if handoff.closed:
                raise ValueError(f"checkpoint writer of {self._location} is closed")
            error = handoff.take_error()
            if error is None:
                if handoff.waiting is not None:
                    handoff.coalesced += 1
                handoff.waiting = data
                handoff.submitted += 1
                handoff.changed.notify_all()
        return error

    def flush(self) -> None:
        begun = signals_deferred(self._begin_flush)
        if isinstance(begun, BaseException):
            raise begun
        outcome = None
        while outcome is None:
            outcome = signals_deferred(self._wait_flush, begun)
        if isinstance(outcome, BaseException):
            raise outcome

    def _begin_flush(self) -> BaseException | tuple[int, int]:
        handoff = self._handoff
        with handoff.changed:
            error = handoff.take_error()
            if error is not None:
                return error
            return (handoff.submitted, handoff.failures)

    def _wait_flush(self, begun: tuple[int, int]) -> BaseException | bool | None:
        """True once the flush's checkpoint is saved, its error if it failed,
        None while it waits (after one slice of waiting)."""
        target, failures = begun
        handoff = self._handoff
        with handoff.changed:
            if handoff.settled < target:
                handoff.changed.wait(_SIGNAL_CHECK)
                return None
            if handoff.durable < target and handoff.failures > failures:
                # The save this flush waited for failed: its error is owed to
                # this caller even when another thread's call raised it first.
                failure = handoff.take_error() or copy.copy(handoff.last_failure)
                if failure is not None:
                    return failure
            return True

    def close(self) -> None:
        if self._thread is threading.current_thread():
            # Called by the finalizer on the worker thread itself (garbage
            # collection ran there): waiting for a flush would wait for this very
            # thread. Stopping is enough; the thread saves what waits, then ends.
            self.stop(None)
            return
        error = signals_deferred(self._mark_closed)
        if error is not None:
            raise error
        try:
            self.flush()
        finally:
            self.stop(None)

    def _mark_closed(self) -> BaseException | None:
        handoff = self._handoff
        with handoff.changed:
            if handoff.closed:
                return handoff.take_error()
            handoff.closed = True
            return None

    def _mark_stopping(self) -> None:
        handoff = self._handoff
        with handoff.changed:
            handoff.closed = True
            handoff.stopping = True
            handoff.changed.notify_all()

    def stop(self, timeout: float | None) -> bool:
        signals_deferred(self._mark_stopping)
        if self._thread is threading.current_thread():
            # Collected by its own thread, which goes on to save what waits.
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread.is_alive():
            left = _SIGNAL_CHECK
            if deadline is not None:
                left = min(left, deadline - time.monotonic())
                if left <= 0:
                    break
            signals_deferred(self._thread.join, left)
        return not self._thread.is_alive()

    def pause(self) -> None:
        handoff = self._handoff
        with handoff.changed:
            handoff.paused = True
            try:
                while handoff.saving:
                    handoff.changed.wait()
            except BaseException:
                # Interrupted (Ctrl-C) before the save in flight finished: not
                # paused, so nothing waits for a resume that never comes.
                handoff.paused = False
                handoff.changed.notify_all()
                raise

    def resume(self) -> None:
        handoff = self._handoff
        with handoff.changed:
            handoff.paused = False
            handoff.changed.notify_all()

    def stats(self) -> RawStats:
        return signals_deferred(self._stats)

    def _stats(self) -> RawStats:
        h = self._handoff
        with h.changed:
            return (
                h.submitted,
                h.saves,
                h.failures,
                h.coalesced,
                h.bytes_saved,
                h.last_failure,
                list(h.latencies),
            )


def _native_worker(storage: SessionStorage) -> _Worker | None:
    """The native worker for ``storage``, when the active backend's save is native.

    A backend whose save for the storage's layout was replaced (tests instrument
    it) gets the threading worker, which goes through that save.
    """
    current = _backend.active.current
    if current.name != "native":
        return None
    from . import _native

    if storage.layout is Layout.SLOTTED:
        if current.save_slotted is not _native.save_slotted:
            return None
        slotted = plan_slotted_save(storage.durability)
        return _native.CheckpointWorker.slotted(
            storage.absolute_location, slotted.in_place.codes, slotted.rebuild.codes
        )
    if current.save is not _native.save:
        return None
    plan = plan_save(storage.durability)
    return _native.CheckpointWorker(
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
_paused: list[_Worker] = []
# The workers forked children inherited. Never touched again: a lock their
# thread held at the fork stays held in the child for ever.
_inherited: list[_Worker] = []


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


os.register_at_fork(
    before=_pause_writers_for_fork,
    after_in_parent=_resume_writers_in_parent,
    after_in_child=_orphan_writers_in_child,
)


def _finish(worker: _Worker) -> None:
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

    _worker: _Worker

    def __init__(self, storage: SessionStorage) -> None:
        if "\0" in storage.location:
            # No save could ever name it; say so now rather than at the first flush.
            raise ValueError(
                f"embedded null byte in session location {storage.location!r}"
            )
        self._storage = storage
        self._pid = os.getpid()
        worker = _native_worker(storage) or _ThreadedWorker(storage)
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
        buffer = as_checkpoint(data)
        self._worker.submit(buffer if isinstance(buffer, bytes) else bytes(buffer))

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
