"""The order of a listing: youngest first, the same every time."""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.frozen
class ListedSession:
    """A session directory as a listing found it."""

    name: str
    mtime_ns: int


def sort_key(mtime_ns: int, name: str) -> tuple[int, str]:
    """Youngest (largest mtime) first; equal times by name, so the order is total."""
    return (-mtime_ns, name)


def in_listing_order(sessions: Iterable[ListedSession]) -> list[ListedSession]:
    """``sessions`` ordered by directory mtime, youngest first, ties by name."""
    return sorted(sessions, key=lambda s: sort_key(s.mtime_ns, s.name))
