"""Per-storage choices: how durable a save is and how the checkpoint is laid out."""

from __future__ import annotations

import enum


class Durability(enum.Enum):
    """How far a finished save is guaranteed to survive.

    ``FULL`` (the default) survives a power cut: the checkpoint and the directory
    entry naming it are flushed before the save returns. ``NONE`` skips both
    flushes; the save is still atomic against a crash of the process, which is
    what a harness on a throw-away machine may prefer for speed.
    """

    FULL = "full"
    NONE = "none"


class Layout(enum.Enum):
    """How a session keeps its checkpoint on disk.

    ``REPLACE`` is plainbox's format: one file, ``session``, replaced by rename.
    ``SLOTTED`` keeps two CRC-checked records in ``session.slots`` and overwrites
    the older one in place, one flush per durable save.
    """

    REPLACE = "replace"
    SLOTTED = "slotted"
