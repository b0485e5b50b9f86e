"""Library calls shielded from signal handlers and from forks.

A Python signal handler runs between two bytecodes of the main thread: one
that raises (Ctrl-C) in the middle of a save of the pure-Python writer could
leave ``session.next``, an open descriptor or a held flock behind, and one
that saves during a save finds its own lock. A fork from another thread in
the middle of any call that holds a descriptor of a session gives the child a
copy of it, and a copy of a flock-ed directory keeps the session locked for as
long as the child lives.

``shielded(call, *args)`` runs ``call`` so that neither happens:

- on the main thread (the only one that runs Python handlers), the signals a
  handler can catch are blocked for the call and delivered when it returns, so
  a handler always finds the call finished, its descriptors closed and its
  lock released (a handler that saves then saves normally);
- a fork waits for every shielded call of other threads to end, and no
  shielded call starts while it forks (the gate of ``_fork_guard``).

The native backend's calls are immune to handlers by construction (they run
in the extension), but not to forks: they are shielded all the same.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from ._fork_guard import gated

_T = TypeVar("_T")

# Blocking a fault the process itself raises makes the kernel kill it at once:
# those stay as they are. SIGKILL and SIGSTOP cannot be blocked.
_FAULTS: Final = {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGTRAP,
    signal.SIGSYS,
    signal.SIGKILL,
    signal.SIGSTOP,
}
DEFERRED: Final = frozenset(signal.valid_signals()) - _FAULTS
_MAIN: Final = threading.main_thread().ident
_sigmask: Final[Callable[[int, Iterable[int]], set[int]]] = _signal.pthread_sigmask


def shielded(call: Callable[..., _T], *args: object) -> _T:
    """``call(*args)``, with no signal handler running and no fork happening
    in the middle of it (see the module's docstring)."""
    if threading.get_ident() != _MAIN:
        return gated(call, *args)
    result: _T = _deferring(gated, call, *args)
    return result


def signals_deferred(call: Callable[..., _T], *args: object) -> _T:
    """``call(*args)`` with no signal handler running in the middle of it; for
    calls that hold no descriptor, only locks (a fork need not wait for them)."""
    if threading.get_ident() != _MAIN:
        return call(*args)
    return _deferring(call, *args)


def _deferring(call: Callable[..., _T], *args: object) -> _T:
    # The mask as it is (running any handler pending, before anything is
    # taken), then the block: pthread_sigmask runs pending handlers after it
    # changed the mask, so one raising there must not leave the block in place.
    # _signal's own function: signal's wrapper turns each mask into a set of
    # enum members, which costs more than the calls themselves.
    before = _sigmask(signal.SIG_BLOCK, ())
    try:
        _sigmask(signal.SIG_BLOCK, DEFERRED)
    except BaseException:
        _sigmask(signal.SIG_SETMASK, before)
        raise
    try:
        return call(*args)
    finally:
        # Delivers what arrived meanwhile: its handler runs now, after the call.
        _sigmask(signal.SIG_SETMASK, before)


def start_without_signals(thread: threading.Thread) -> None:
    """Start a thread of the library's own, which never runs a Python handler,
    with the signals a handler can catch blocked from its first instruction: a
    thread that blocked them itself could take one sent to the process before
    it did, and the interpreter, told of a signal by a thread other than its
    main one, may not run the handler until its main thread next waits."""
    _deferring(thread.start)
