"""Which sessions a prune removes: a pure function of the scan, the time and the policy.

The repository's ``prune()`` only executes what ``plan_prune`` decides, so every
rule below is tested without touching a disk.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from ._lock_state import LockState
from ._session_info import SessionInfo


def _check_count(
    _: object, attribute: attrs.Attribute[int | None], value: object
) -> None:
    if value is None:
        return
    # bool is an int to Python, but keep=True is a mistake, not "keep one".
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int or None, got {value!r}")
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


def _check_older_than(_: object, __: object, value: datetime.timedelta | None) -> None:
    if value is None:
        return
    if not isinstance(value, datetime.timedelta):
        raise TypeError(f"older_than must be a timedelta or None, got {value!r}")
    if value < datetime.timedelta(0):
        raise ValueError(f"older_than must not be negative, got {value}")


@attrs.frozen
class PrunePolicy:
    """What a prune may remove; at least one of the three limits is required.

    ``keep=N`` spares the N youngest sessions that are not held by a live
    writer; ``older_than=age`` spares every session modified within ``age`` of
    now; ``max_total_size=bytes`` allows removing the oldest sessions, as few
    as bring the checkpoints' total size (held sessions included, as ``list``
    totals them) down to the budget. Given several, a session goes only when
    every one allows it, so no limit is ever overridden by another (and a
    budget may stay unmet where another limit spares what it would need).
    Given none, there is no policy, and a prune that would wipe the whole
    repository by accident is refused with ValueError.
    """

    keep: int | None = attrs.field(default=None, validator=_check_count)
    older_than: datetime.timedelta | None = attrs.field(
        default=None, validator=_check_older_than
    )
    max_total_size: int | None = attrs.field(default=None, validator=_check_count)

    def __attrs_post_init__(self) -> None:
        if (
            self.keep is None
            and self.older_than is None
            and self.max_total_size is None
        ):
            raise ValueError(
                "prune needs keep, older_than, max_total_size or several; "
                "refusing to remove all"
            )


def in_prune_order(sessions: Iterable[SessionInfo]) -> list[SessionInfo]:
    """``sessions`` by ``modified``, youngest first; equal times by location.

    The plan sorts for itself so that its answer depends on the set of sessions
    only, never on the order a caller happens to pass them in.
    """
    by_location = sorted(sessions, key=lambda s: s.location)
    return sorted(by_location, key=lambda s: s.modified, reverse=True)


_SPARED_LOCKS: Final = frozenset({LockState.HELD, LockState.UNKNOWN})


def _removable(session: SessionInfo) -> bool:
    return session.lock not in _SPARED_LOCKS and session.recognised


def plan_prune(
    sessions: Iterable[SessionInfo],
    now: datetime.datetime,
    policy: PrunePolicy,
) -> list[SessionInfo]:
    """The sessions ``policy`` removes at ``now``, youngest first.

    A session whose lock is ``HELD`` is never removed and does not count
    towards ``keep`` (its size does count towards ``max_total_size``): a live
    writer is using it. Nor is one whose lock is ``UNKNOWN``, nor a directory
    the library does not recognise as its own (``SessionInfo.recognised``: an
    entry that is none of the library's or its clients' files, or nothing could
    be read to tell). A ``STALE`` one is fair game, its writer is gone. The
    answer is a subset of ``sessions``, and planning again on what is left
    removes nothing more.
    """
    if now.tzinfo is None:
        raise ValueError(f"prune time must be timezone-aware, got {now!r}")
    sessions = list(sessions)
    candidates = in_prune_order(s for s in sessions if _removable(s))
    # Each limit judges the whole scan; the plan is what all of them allow.
    over_budget = (
        None
        if policy.max_total_size is None
        else over_size_budget(sessions, candidates, policy.max_total_size)
    )
    if policy.keep is not None:
        candidates = candidates[policy.keep :]
    if policy.older_than is not None:
        try:
            cutoff = now - policy.older_than
        except OverflowError:
            # An age reaching back before the calendar spares every session.
            return []
        candidates = [s for s in candidates if s.modified < cutoff]
    if over_budget is not None:
        candidates = [s for s in candidates if s.location in over_budget]
    return candidates


def over_size_budget(
    sessions: Sequence[SessionInfo], removable: Sequence[SessionInfo], budget: int
) -> frozenset[str]:
    """The locations a size budget allows removing: the oldest of ``removable``,
    as few as bring the total size of ``sessions`` down to ``budget``.

    ``removable`` is youngest first. A session without a checkpoint frees
    nothing, so the budget never asks for it.
    """
    total = sum(s.checkpoint_size or 0 for s in sessions)
    chosen = set()
    for info in reversed(removable):
        if total <= budget:
            break
        if info.checkpoint_size:
            chosen.add(info.location)
            total -= info.checkpoint_size
    return frozenset(chosen)
