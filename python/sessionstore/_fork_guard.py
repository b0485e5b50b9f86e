"""The library's one fork guard: what it does around every fork, and in which order.

A child forked in the middle of a call that holds a session's descriptors gets
copies of them, and a copy of a flock-ed directory keeps the session locked for
as long as the child lives. A child also inherits the parent's checkpoint
writers and held sessions, but none of the threads that use them.

This module alone registers with ``os.register_at_fork``. Its own hooks are the
gate: before a fork it closes, so that no shielded call (``_shield``) of
another thread starts, and it waits for those in flight to end; after the fork
it opens again, in the parent and in the child. The modules that own writers
and held sessions ``subscribe`` what they do around a fork, and the gate is
registered first, so around every fork, in this order:

1. before it, each subscriber's ``before`` (the checkpoint writers pause: each
   waits for its save in flight and starts no other), then the gate closes;
2. after it, in the parent, the gate opens, then each subscriber's
   ``after_in_parent`` (the writers resume);
3. after it, in the child, the gate opens, then each subscriber's
   ``after_in_child`` (the writers and held sessions are orphaned: the child
   closes its copies of the held sessions' files, and refuses saves and
   submissions).

Subscribers nest as ``os.register_at_fork`` nests hooks: ``before`` hooks run
from the last subscribed to the first, the others from the first to the last,
and a hook that raises is reported without keeping the next from running. The
writers pause before the gate closes: a fallback worker's save is itself a
shielded call, so with the gate closed first, a worker that had just taken a
checkpoint would wait at the gate, and its pause would wait for that save for
ever.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Final, TypeVar

_T = TypeVar("_T")

_changed: Final = threading.Condition(threading.RLock())
_in_flight = 0
_depth: Final = threading.local()
# The thread forking, and how deeply (a handler may fork inside the hooks):
# while set, shielded calls of other threads wait instead of starting, so a
# thread saving in a loop cannot keep the fork waiting for ever.
_forker: int | None = None
_forks = 0


def _enter() -> None:
    global _in_flight
    with _changed:
        me = threading.get_ident()
        while _forker is not None and _forker != me:
            _changed.wait()
        _in_flight += 1
    _depth.n = getattr(_depth, "n", 0) + 1


def _leave() -> None:
    global _in_flight
    _depth.n -= 1
    with _changed:
        _in_flight -= 1
        # Only a fork waits for calls to end (it set _forker first, under the
        # lock), for as many as its own thread has not left yet.
        if _forker is not None:
            _changed.notify_all()


def gated(call: Callable[..., _T], *args: object) -> _T:
    """``call(*args)`` through the gate: it waits for a fork in progress to be
    done, and a fork waits for it to end."""
    _enter()
    try:
        return call(*args)
    finally:
        _leave()


def _hold_off_shielded_calls() -> None:
    """Before a fork: close the gate to new shielded calls of other threads,
    wait until none is in flight, and keep the gate closed until the fork is
    done. A call of the forking thread itself (a handler forking) cannot be
    waited for. A handler may run in the hooks and fork again: the gate's
    lock is re-entrant for that. Two threads forking take turns."""
    global _forker, _forks
    _changed.acquire()
    me = threading.get_ident()
    while _forker is not None and _forker != me:
        _changed.wait()
    _forker = me
    _forks += 1
    mine = getattr(_depth, "n", 0)
    while _in_flight > mine:
        _changed.wait()


def _open_gate() -> None:
    global _forker, _forks
    _forks -= 1
    if _forks == 0:
        _forker = None
        _changed.notify_all()
    _changed.release()


def subscribe(
    *,
    before: Callable[[], None] | None = None,
    after_in_parent: Callable[[], None] | None = None,
    after_in_child: Callable[[], None] | None = None,
) -> None:
    """Run these around every later fork: ``before`` ahead of the gate closing,
    ``after_in_parent`` and ``after_in_child`` once it is open again (see the
    module's docstring for the order)."""
    hooks = {
        "before": before,
        "after_in_parent": after_in_parent,
        "after_in_child": after_in_child,
    }
    os.register_at_fork(**{when: h for when, h in hooks.items() if h is not None})


# First, so that every subscriber's hooks run outside the gate's.
os.register_at_fork(
    before=_hold_off_shielded_calls,
    after_in_parent=_open_gate,
    after_in_child=_open_gate,
)
