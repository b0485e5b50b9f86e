"""Which writer backend performs the syscalls: the native extension or the fallback.

Chosen once, at import, from ``SESSIONSTORE_BACKEND``: unset or empty picks the
extension when it imports and the pure-Python writer otherwise; ``python`` forces
the fallback; ``native`` forces the extension and fails loudly without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import attrs

from . import _python_held_writer, _python_listing, _python_slots_writer, _python_writer
from ._lock_state import LockState

log = logging.getLogger("sessionstore")

ENV_VAR: Final = "SESSIONSTORE_BACKEND"
NAMES: Final = ("native", "python")

# The order of the native side's lock-state codes.
_LOCK_STATES: Final = (LockState.UNLOCKED, LockState.HELD, LockState.STALE)


class HeldWriter(Protocol):
    """A held session's writer: ``_python_held_writer.HeldWriter`` documents it."""

    @property
    def closed(self) -> bool: ...
    def save(self, data: bytes | bytearray | memoryview) -> None: ...
    def close(self) -> None: ...
    def forget(self) -> None: ...


@attrs.frozen
class Backend:
    """The functions one backend provides, with the same signatures in both."""

    name: str
    save: Callable[[str, bytes | bytearray | memoryview, bytes, str, str], None]
    load: Callable[[str], bytes]
    lock_state: Callable[[str], LockState]
    break_stale_lock: Callable[[str], bool]
    list_sessions: Callable[[str], list[str] | None]
    scan_sessions: Callable[
        [str],
        tuple[
            list[_python_listing.ScannedSession], list[_python_listing.ScannedSession]
        ]
        | None,
    ]
    save_slotted: Callable[[str, bytes | bytearray | memoryview, bytes, bytes], None]
    """a slotted save plan: (location, data, in-place codes, rebuild codes)"""
    load_slots: Callable[[str, bool], bytes | None]
    """the newest valid record of a slots file, or (True) the one before it"""
    hold: Callable[[str, bytes, bytes, bytes, bytes, bool], HeldWriter]
    """a held session's writer: (location, acquire, save, rebuild and release
    codes, whether the layout is slotted)"""


# What the extension must provide: a function of the same name for each one a
# backend has (a class for a held session's writer). An extension built from
# older sources may lack some.
_NATIVE_NAMES: Final = {"hold": "HeldWriter"}
NATIVE_FUNCTIONS: Final = tuple(
    _NATIVE_NAMES.get(field.name, field.name)
    for field in attrs.fields(Backend)
    if field.name != "name"
)


PYTHON: Final = Backend(
    name="python",
    save=_python_writer.save,
    load=_python_writer.load,
    lock_state=_python_writer.lock_state,
    break_stale_lock=_python_writer.break_stale_lock,
    list_sessions=_python_listing.list_sessions,
    scan_sessions=_python_listing.scan_sessions,
    save_slotted=_python_slots_writer.save,
    load_slots=_python_slots_writer.load,
    hold=_python_held_writer.HeldWriter,
)


def load_native() -> Backend:
    """The native backend; ImportError when the extension is not built.

    An extension that imports but lacks one of the functions (built from other
    sources) is just as unusable, and says which ones and where it was loaded from.
    """
    from . import _native

    missing = [
        name for name in NATIVE_FUNCTIONS if not callable(getattr(_native, name, None))
    ]
    if missing:
        raise ImportError(
            f"the native extension {getattr(_native, '__file__', '_native')} lacks "
            f"{', '.join(missing)}; rebuild it with `pip install -e .`"
        )

    def lock_state(location: str) -> LockState:
        return _LOCK_STATES[_native.lock_state(location)]

    return Backend(
        name="native",
        save=_native.save,
        load=_native.load,
        lock_state=lock_state,
        break_stale_lock=_native.break_stale_lock,
        list_sessions=_native.list_sessions,
        scan_sessions=_native.scan_sessions,
        save_slotted=_native.save_slotted,
        load_slots=_native.load_slots,
        hold=_native.HeldWriter,
    )


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
    import os

    return select(os.environ)


active: Final = _Active(_choose())
