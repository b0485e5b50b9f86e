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
    UNKNOWN = "unknown"
    """this process cannot tell: it may not look into the session directory
    (another user's private session), so neither a holder nor a leftover
    ``session.next`` can be ruled out; a prune treats it as held"""


# What a writer backend's ``lock_state`` returns: the index of the state here.
LOCK_STATE_CODES: Final = (LockState.UNLOCKED, LockState.HELD, LockState.STALE)


@attrs.frozen
class NextFile:
    """One look at ``session.next``: enough to tell whether it changed between looks.

    A writer that creates, writes or renames the file changes its inode or its
    change time, so two equal looks mean nobody touched it in between.
    """

    inode: int
    ctime_ns: int


def classify_lock(
    *, held: bool, next_before: NextFile | None, next_after: NextFile | None
) -> LockState:
    """The state from what a probe saw: ``session.next``, the lock, ``session.next``.

    A live writer creates, writes and renames ``session.next`` only while it
    holds the lock. So the file is a leftover (STALE) only when the same,
    unchanged file was there on both sides of a look at the lock that found no
    holder; a file that appeared, changed or vanished during the probe means a
    writer was inside a save (HELD). One look at the file, before or after the
    lock, would take a writer that starts or finishes in between for a dead one.
    """
    if held or next_before != next_after:
        return LockState.HELD
    return LockState.UNLOCKED if next_after is None else LockState.STALE


@attrs.frozen
class FileKey:
    """A file as the kernel's lock table names it: device and inode."""

    major: int
    minor: int
    inode: int


PROC_LOCKS: Final = "/proc/locks"
PROC_PID_NAMESPACE: Final = "/proc/self/ns/pid"
# The inode number the kernel gives the initial PID namespace (PROC_PID_INIT_INO).
INITIAL_PID_NAMESPACE_INODE: Final = 0xEFFFFFFC


def _flock_line(line: str) -> tuple[FileKey, int] | None:
    """The file and the owner's pid of one ``FLOCK`` line of ``/proc/locks``.

    A line reads ``1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF``; blocked
    waiters (``1: -> FLOCK ...``) hold nothing and give None, and so does every
    line that does not parse: a format this code does not know must not be read
    as a lock that is not there.
    """
    fields = line.split()
    if len(fields) < 6 or fields[1] != "FLOCK":
        return None
    parts = fields[5].split(":")
    if len(parts) != 3:
        return None
    try:
        key = FileKey(int(parts[0], 16), int(parts[1], 16), int(parts[2]))
        pid = int(fields[4])
    except ValueError:
        return None
    return key, pid


def parse_proc_locks(text: str) -> frozenset[FileKey]:
    """The files that hold a ``FLOCK`` lock, from the text of ``/proc/locks``.

    (The caller treats an empty answer by probing.)
    """
    return frozenset(found[0] for found in map(_flock_line, text.splitlines()) if found)


def parse_lock_owners(text: str) -> dict[FileKey, frozenset[int]]:
    """The pids the kernel records as owners of each ``FLOCK``, from ``/proc/locks``.

    The pid is the process that took the lock, as this pid namespace numbers
    it; a lock lives as long as any descriptor of the open file, so the owner
    may have exited or passed the descriptor on since.
    """
    owners: dict[FileKey, set[int]] = {}
    for found in map(_flock_line, text.splitlines()):
        if found:
            owners.setdefault(found[0], set()).add(found[1])
    return {key: frozenset(pids) for key, pids in owners.items()}


@attrs.frozen
class LockTable:
    """The files the kernel's lock table says hold a ``FLOCK``, indexed for lookups.

    Built once from ``/proc/locks``; a repository scan asks it about every
    session instead of reading the table once per session.
    """

    keys: frozenset[FileKey]
    complete: bool = True
    """whether the table shows every holder: ``/proc/locks`` leaves out the
    locks of processes outside the reader's PID namespace, so read from any
    namespace but the initial one it can only say who holds, never who not"""
    inodes: frozenset[int] = attrs.field(
        init=False,
        default=attrs.Factory(
            lambda table: frozenset(k.inode for k in table.keys), takes_self=True
        ),
    )

    def holds(self, key: FileKey) -> bool | None:
        """Whether ``key`` holds a lock: True or False when the table tells.

        None when only trying the lock can tell: the table names the inode
        under another device number than ``stat`` reports (btrfs subvolumes),
        so a match on the inode alone is a maybe, not a no; or the table is
        not ``complete``, so a lock it does not show may still be held.
        """
        if key in self.keys:
            return True
        if key.inode not in self.inodes and self.complete:
            return False
        return None
