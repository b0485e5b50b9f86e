"""A held session's writer in Python: same plan, same syscalls as the native ``held``.

The directory is opened and locked once, by the held plan's ``acquire`` steps;
each save runs its ``save`` steps on the descriptors kept open (the replace
sequence, or the slotted in-place write); ``release`` closes them, which
releases the lock.
"""

from __future__ import annotations

import threading

from .._naming import CHECKPOINT_NAME, NEXT_NAME, SLOTS_NAME
from .save import REPLACE_STEPS, SaveState, run
from .slotted import STEPS, run_slotted


class HeldWriter:
    """A session directory held open and locked; a lock inside serialises threads.

    Python code can be interrupted between any two bytecodes by a signal
    handler of the same thread: one that saves through this writer during a
    save raises RuntimeError, one that closes it has the writer closed as soon
    as the interrupted save ends (the native writer, whose saves no handler
    can interrupt, needs neither).
    """

    __slots__ = (
        "_busy",
        "_close_after",
        "_location",
        "_lock",
        "_rebuild",
        "_release",
        "_save",
        "_slotted",
        "_state",
    )

    def __init__(
        self,
        location: str,
        acquire: bytes,
        save: bytes,
        rebuild: bytes,
        release: bytes,
        slotted: bool,
    ) -> None:
        state = SaveState(
            location, NEXT_NAME, SLOTS_NAME if slotted else CHECKPOINT_NAME
        )
        try:
            run(state, acquire, STEPS)
        except BaseException:
            state.close()
            raise
        self._location = location
        self._save = save
        self._rebuild = rebuild
        self._release = release
        self._slotted = slotted
        self._lock = threading.RLock()
        self._busy = False
        self._close_after = False
        self._state: SaveState | None = state

    @property
    def closed(self) -> bool:
        return self._state is None

    def save(self, data: bytes | bytearray | memoryview) -> None:
        """Save ``data`` on the held descriptors."""
        with self._lock:
            state = self._state
            if state is None:
                raise ValueError(f"held session {self._location} is closed")
            if self._busy:
                raise RuntimeError(
                    f"held session {self._location}: a save from inside one of "
                    "its own saves (a signal handler?)"
                )
            self._busy = True
            try:
                if self._slotted:
                    run_slotted(state, data, self._save, self._rebuild)
                else:
                    state.data = data
                    try:
                        run(state, self._save, REPLACE_STEPS)
                    finally:
                        # The held state must not keep the checkpoint alive.
                        state.data = b""
            finally:
                self._busy = False
                if self._close_after:
                    self._release_now()

    def close(self) -> None:
        """Run the release steps, which release the lock; nothing once closed.

        Called by a signal handler during a save of this thread, it leaves the
        closing to the end of that save.
        """
        with self._lock:
            if self._busy:
                self._close_after = True
                return
            self._release_now()

    def _release_now(self) -> None:
        state, self._state = self._state, None
        if state is None:
            return
        try:
            run(state, self._release, STEPS)
        finally:
            state.close()

    def forget(self) -> None:
        """In a forked child: close the inherited descriptors, which leaves the
        parent's lock held, and refuse saves from then on. A save in flight on
        another thread at the fork left the lock inside taken: then the
        descriptors stay open until the child exits or execs."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            state, self._state = self._state, None
            if state is not None:
                state.close()
        finally:
            self._lock.release()
