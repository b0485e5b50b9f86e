"""The checkpoint writer's worker in Python: a thread saving what waits in a slot.

The same handoff as the native ``checkpoint_worker``: ``submit`` puts the
checkpoint in a one-place slot, the thread saves whatever is in it, one save at
a time, so a checkpoint superseded before its turn is never written.
"""

from __future__ import annotations

import collections
import copy
import threading
import time
from collections.abc import Callable
from typing import Final

from .._shield import shielded, signals_deferred, start_without_signals
from .._writer_stats import LATENCY_WINDOW, RawStats
from .save import save
from .slotted import save_slotted

# How long a wait of the main thread goes with signals deferred: a signal's
# handler (Ctrl-C) runs at most this late, never while a lock is half taken.
_SIGNAL_CHECK: Final = 0.05


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


class CheckpointWorker:
    """The worker as a daemon thread running one save plan on each checkpoint.

    ``CheckpointWorker(location, codes, next_name, target)`` runs the replace
    sequence, ``CheckpointWorker.slotted(location, in_place, rebuild)`` the
    slotted one; ``save_one``, when given, replaces either (tests put a gate in
    front of the real save).
    """

    __slots__ = ("_handoff", "_location", "_thread")

    def __init__(
        self,
        location: str,
        codes: bytes,
        next_name: str,
        target: str,
        *,
        save_one: Callable[[bytes], None] | None = None,
    ) -> None:
        if save_one is None:

            def save_one(data: bytes) -> None:
                shielded(save, location, data, codes, next_name, target)

        self._start(location, save_one)

    @classmethod
    def slotted(
        cls, location: str, in_place: bytes, rebuild: bytes
    ) -> CheckpointWorker:
        def save_one(data: bytes) -> None:
            shielded(save_slotted, location, data, in_place, rebuild)

        worker = cls.__new__(cls)
        worker._start(location, save_one)
        return worker

    def _start(self, location: str, save_one: Callable[[bytes], None]) -> None:
        self._location = location
        self._handoff = handoff = _Handoff()
        self._thread = threading.Thread(
            target=_work,
            args=(handoff, save_one),
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
