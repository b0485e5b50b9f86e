"""Which writer backend performs the syscalls: the native extension or the fallback.

Chosen once, at import, from ``SESSIONSTORE_BACKEND``: unset or empty picks the
extension when it imports and the pure-Python fallback otherwise; ``python``
forces the fallback; ``native`` forces the extension and fails loudly without it.

Both are modules exporting the same names (``_native.pyi`` lists them); a
backend is the chosen module's functions and classes under those names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Final, Protocol

import attrs

from . import _fallback
from ._fallback.listing import ScannedSession
from ._writer_stats import RawStats

log = logging.getLogger("sessionstore")

ENV_VAR: Final = "SESSIONSTORE_BACKEND"
NAMES: Final = ("native", "python")


class HeldWriter(Protocol):
    """A held session's writer: ``_fallback.held.HeldWriter`` documents it."""

    @property
    def closed(self) -> bool: ...
    def save(self, data: bytes | bytearray | memoryview) -> None: ...
    def close(self) -> None: ...
    def forget(self) -> None: ...


class Worker(Protocol):
    """A checkpoint writer's worker: ``_fallback.checkpoint_worker`` documents it."""

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


HeldWriterClass = Callable[[str, bytes, bytes, bytes, bytes, bool], HeldWriter]


class WorkerClass(Protocol):
    """How a backend makes a worker: for the replace sequence, or ``slotted``."""

    def __call__(
        self, location: str, codes: bytes, next_name: str, target: str
    ) -> Worker: ...
    def slotted(self, location: str, in_place: bytes, rebuild: bytes) -> Worker: ...


@attrs.frozen
class Backend:
    """The names one backend module exports, with the same signatures in both."""

    name: str
    save: Callable[[str, bytes | bytearray | memoryview, bytes, str, str], None]
    load: Callable[[str], bytes]
    lock_state: Callable[[str], int]
    """the index of the session's state in ``_lock_state.LOCK_STATE_CODES``"""
    break_stale_lock: Callable[[str], bool]
    list_sessions: Callable[[str], list[str] | None]
    scan_sessions: Callable[
        [str], tuple[list[ScannedSession], list[ScannedSession]] | None
    ]
    save_slotted: Callable[[str, bytes | bytearray | memoryview, bytes, bytes], None]
    """a slotted save plan: (location, data, in-place codes, rebuild codes)"""
    load_slots: Callable[[str, bool], bytes | None]
    """the newest valid record of a slots file, or (True) the one before it"""
    HeldWriter: HeldWriterClass
    """a held session's writer: (location, acquire, save, rebuild and release
    codes, whether the layout is slotted)"""
    CheckpointWorker: WorkerClass

    @classmethod
    def of(cls, name: str, module: ModuleType) -> Backend:
        """The backend ``module`` provides; ImportError naming what it lacks."""
        missing = [n for n in EXPORTS if not callable(getattr(module, n, None))]
        if missing:
            raise ImportError(
                f"the {name} backend {getattr(module, '__file__', module.__name__)} "
                f"lacks {', '.join(missing)}; rebuild it with `pip install -e .`"
            )
        return cls(name, *(getattr(module, n) for n in EXPORTS))


# What each backend module exports: everything a backend is but its name.
EXPORTS: Final = tuple(f.name for f in attrs.fields(Backend) if f.name != "name")

PYTHON: Final = Backend.of("python", _fallback)


def load_native() -> Backend:
    """The native backend; ImportError when the extension is not built.

    An extension that imports but lacks one of the names (built from other
    sources) is just as unusable, and says which ones and where it was loaded from.
    """
    from . import _native

    return Backend.of("native", _native)


def select(environ: Mapping[str, str]) -> Backend:
    """The backend ``environ`` asks for (see the module's docstring)."""
    wanted = environ.get(ENV_VAR, "")
    if wanted == "python":
        return PYTHON
    if wanted == "native":
        try:
            return load_native()
        except ImportError as exc:
            raise ImportError(
                f"{ENV_VAR}=native but the native extension "
                f"sessionstore._native cannot be imported: {exc}"
            ) from exc
    if wanted:
        raise ImportError(
            f"{ENV_VAR} must be one of {', '.join(NAMES)} or unset, got {wanted!r}"
        )
    try:
        return load_native()
    except ImportError as exc:
        log.debug("native writer unavailable, using the Python fallback: %s", exc)
        return PYTHON


class _Active:
    """The backend every storage uses; one per process, switched only by tests."""

    __slots__ = ("current",)

    def __init__(self, current: Backend) -> None:
        self.current = current


def _choose() -> Backend:
    return select(os.environ)


active: Final = _Active(_choose())
