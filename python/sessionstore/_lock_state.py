"""Whether a session is locked, and by whom: the pure half of the lock probe.

A save holds an exclusive ``flock`` on the session directory for its whole
duration and leaves ``session.next`` behind only if its process died. The probe
reads ``/proc/locks`` instead of trying the lock itself, so that looking at a
session can never make a live writer's ``flock`` fail.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs


class LockState(enum.Enum):
    """The lock of one session."""

    UNLOCKED = "unlocked"
    """no writer inside a save and no leftover ``session.next``"""
    HELD = "held"
    """a live process (this one or another) is inside a save"""
    STALE = "stale"
    """``session.next`` is the leftover of a writer that is gone"""


def classify_lock(*, held: bool, next_exists: bool) -> LockState:
    """The state from the two facts a probe gathers."""
    if held:
        return LockState.HELD
    return LockState.STALE if next_exists else LockState.UNLOCKED


@attrs.frozen
class FileKey:
    """A file as the kernel's lock table names it: device and inode."""

    major: int
    minor: int
    inode: int


PROC_LOCKS: Final = "/proc/locks"


def parse_proc_locks(text: str) -> frozenset[FileKey]:
    """The files that hold a ``FLOCK`` lock, from the text of ``/proc/locks``.

    A line reads ``1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF``; blocked
    waiters (``1: -> FLOCK ...``) hold nothing and are left out, and so is every
    line that does not parse: a format this code does not know must not be read
    as a lock that is not there (the caller treats an empty answer by probing).
    """
    keys = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        parts = fields[5].split(":")
        if len(parts) != 3:
            continue
        try:
            keys.add(FileKey(int(parts[0], 16), int(parts[1], 16), int(parts[2])))
        except ValueError:
            continue
    return frozenset(keys)
