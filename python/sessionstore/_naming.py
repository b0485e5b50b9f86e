"""Names and paths of sessions: pure functions, no I/O.

Everything a session directory is called, and every file in it, is decided here,
so that the storage, the repository and the tests agree on one spelling.
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Final

import attrs

SESSION_SUFFIX: Final = ".session"
CHECKPOINT_NAME: Final = "session"
NEXT_NAME: Final = "session.next"
SLOTS_NAME: Final = "session.slots"
CHECKPOINT_FILES: Final = (CHECKPOINT_NAME, SLOTS_NAME)
"""The files that may hold a session's checkpoint, the one a load prefers
first: ``session`` wins over a ``session.slots`` an interrupted conversion left."""
TOMBSTONE_MARK: Final = ".removing-"

# At most this much of a prefix reaches a session's name: with the timestamp,
# the token, the suffix and a removal's tombstone marks the name stays well
# within the 255 bytes a directory entry may have.
MAX_PREFIX: Final = 128

# Only these characters may reach the file system from a caller's prefix: no
# separator, no NUL, nothing a shell or another OS would read differently.
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")


def slug(prefix: str) -> str:
    """Make ``prefix`` safe as the start of a directory name.

    Every character outside ``[A-Za-z0-9._-]`` becomes ``_`` and so does a
    leading ``.``: a session must never be hidden from listing nor escape its
    base directory (``../x`` becomes ``_._x``).
    """
    safe = _UNSAFE.sub("_", prefix)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    return safe


def plan_session_name(prefix: str, now: datetime.datetime, token: str) -> str:
    """The directory name of a new session.

    ``<slug(prefix)><UTC timestamp>-<token>.session``; the timestamp makes names
    sort by creation time for a person reading a listing, the random token makes
    them unique (the caller retries with another token when mkdir says EEXIST).
    The prefix is cut to ``MAX_PREFIX`` characters, so that every session can
    also be renamed to its tombstone.
    """
    if now.tzinfo is None:
        raise ValueError(f"session time must be timezone-aware, got {now!r}")
    if not token or _UNSAFE.search(token) or token.startswith("."):
        raise ValueError(f"session token must be a safe non-empty name, got {token!r}")
    stamp = now.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{slug(prefix[:MAX_PREFIX])}{stamp}-{token}{SESSION_SUFFIX}"


def session_id(location: str) -> str:
    """The id of a session: its directory's name without the extension."""
    name = os.path.basename(location.rstrip("/") or location)
    return os.path.splitext(name)[0]


def is_session_name(name: str) -> bool:
    """Whether a directory entry is a session a listing shows."""
    return name.endswith(SESSION_SUFFIX) and not name.startswith(".")


# The longest name a directory entry may have on the file systems this runs on.
NAME_MAX: Final = 255


def plan_tombstone_name(name: str, token: str, name_max: int = NAME_MAX) -> str:
    """The hidden name a session is renamed to before it is deleted.

    Hidden, so a crash half-way through deleting never leaves a half-removed
    session visible to listing; marked, so a later scan can finish the job.
    The session's name is cut short (in bytes, as the file system counts)
    where the whole would not fit in ``name_max`` bytes: any session the file
    system holds can be removed.
    """
    tail = f"{TOMBSTONE_MARK}{token}"
    room = name_max - len(os.fsencode(f".{tail}"))
    kept = os.fsdecode(os.fsencode(name)[:room])
    return f".{kept}{tail}"


def is_tombstone_name(name: str) -> bool:
    """Whether a directory entry is the leftover of an interrupted removal."""
    return name.startswith(".") and TOMBSTONE_MARK in name


@attrs.frozen
class StoragePaths:
    """Every path of one session, spelled once."""

    location: str
    checkpoint: str
    next: str
    slots: str

    @classmethod
    def of(cls, location: str) -> StoragePaths:
        return cls(
            location=location,
            checkpoint=os.path.join(location, CHECKPOINT_NAME),
            next=os.path.join(location, NEXT_NAME),
            slots=os.path.join(location, SLOTS_NAME),
        )
