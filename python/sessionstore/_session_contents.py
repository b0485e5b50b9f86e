"""What a session directory may hold for a prune to call it the library's own.

A directory named ``*.session`` is not proof of anything: a person may keep
notes in ``my-notes.session``. A prune removes a directory only when every
entry in it is a file the library writes or a directory a client of the
library keeps there, each of the right type. Pure: the entries come from a
listing, the rule is a value.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import Final

import attrs

from ._naming import CHECKPOINT_NAME, NEXT_NAME, SLOTS_NAME, TOMBSTONE_MARK


class EntryKind(enum.IntEnum):
    """The type of one directory entry, as a listing reports it (links not followed)."""

    OTHER = 0
    """a symlink, a FIFO, a socket, a device"""
    FILE = 1
    """a regular file"""
    DIRECTORY = 2


@attrs.frozen
class SessionContents:
    """The entries a session directory may hold: regular ``files`` and ``directories``.

    An entry of a listed name but of another type (a FIFO named
    ``session.slots``, a file named ``io-logs``) is no more recognised than an
    unknown name: the library and its clients never make one.
    """

    files: frozenset[str]
    directories: frozenset[str] = frozenset()

    def unrecognised(self, entries: Iterable[tuple[str, int]]) -> tuple[str, ...]:
        """The names among ``entries`` (name, ``EntryKind``) this rule does not know,
        sorted."""
        unknown = [
            name
            for name, kind in entries
            if not (
                name in self.files
                if kind == EntryKind.FILE
                else kind == EntryKind.DIRECTORY and name in self.directories
            )
        ]
        return tuple(sorted(unknown)) if unknown else ()

    def __or__(self, other: SessionContents) -> SessionContents:
        return SessionContents(
            self.files | other.files, self.directories | other.directories
        )


LIBRARY_FILES: Final = SessionContents(
    frozenset({CHECKPOINT_NAME, NEXT_NAME, SLOTS_NAME})
)
"""What the library itself writes into a session directory."""

PLAINBOX_LAYOUT: Final = SessionContents(
    frozenset(), frozenset({"io-logs", "CHECKBOX_DATA"})
)
"""What plainbox keeps beside the checkpoint: job I/O logs and the session share."""

CHECKBOX_LAYOUT: Final = SessionContents(
    frozenset(), frozenset({"io-logs", "session-share"})
)
"""What today's Checkbox keeps beside the checkpoint."""

RECOGNISED: Final = LIBRARY_FILES | PLAINBOX_LAYOUT | CHECKBOX_LAYOUT
"""The rule a prune applies: the library's files and every known client's layout.

A client face that puts more into a session directory adds its layout here,
so that what a prune removes is always written down in one place.
"""

_TOMBSTONE: Final = re.compile(
    r"\.(?P<name>.+)" + re.escape(TOMBSTONE_MARK) + r"[0-9a-f]{8}", re.DOTALL
)


def tombstone_origin(name: str) -> str | None:
    """The name of the session a tombstone named ``name`` was, or None when
    ``name`` is not one ``plan_tombstone_name`` makes: a hidden name, then
    the session's name (cut short where the whole would be too long), then
    the removal mark and eight lowercase hex digits, exactly."""
    match = _TOMBSTONE.fullmatch(name)
    return None if match is None else match["name"]
