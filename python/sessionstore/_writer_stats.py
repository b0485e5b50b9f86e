"""What a CheckpointWriter has done, as a value: counts, bytes, latencies.

Both workers keep the same raw counters (``RawStats``) and the durations of
their last ``LATENCY_WINDOW`` successful saves, updated by the saving thread
(``submit()`` only counts what it replaces); ``writer_stats`` turns them into a
``WriterStats`` when asked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import attrs

LATENCY_WINDOW: Final = 1024
"""How many of the latest successful saves the latency figures cover."""

RawStats = tuple[int, int, int, int, int, "BaseException | None", Sequence[int]]
"""(submitted, saves run, saves failed, coalesced, bytes saved, last error,
save durations in nanoseconds, oldest first), as a worker reports them."""


@attrs.frozen
class SaveLatency:
    """Durations of the latest successful saves, in seconds."""

    median: float
    p99: float
    """the 99th percentile (nearest rank)"""
    max: float
    saves: int
    """how many saves these figures cover (at most ``LATENCY_WINDOW``)"""


@attrs.frozen
class WriterStats:
    """A snapshot of one writer's work since it was made."""

    submitted: int
    """checkpoints taken by ``submit()``"""
    saved: int
    """saves that succeeded"""
    failed: int
    """saves that failed"""
    coalesced: int
    """checkpoints replaced by a newer one before their turn, never saved"""
    bytes_saved: int
    """the size of every checkpoint saved, summed"""
    last_error: BaseException | None
    """the error of the latest failed save (whether raised yet or not)"""
    latency: SaveLatency | None
    """over the latest ``LATENCY_WINDOW`` successful saves; None before the first"""


def summarize_latency(durations_ns: Sequence[int]) -> SaveLatency | None:
    """Median, 99th percentile (nearest rank) and maximum of ``durations_ns``."""
    if not durations_ns:
        return None
    ordered = sorted(durations_ns)
    count = len(ordered)
    middle = count // 2
    median = (
        ordered[middle] if count % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    )
    p99 = ordered[max(0, math.ceil(0.99 * count) - 1)]
    return SaveLatency(
        median=median / 1e9, p99=p99 / 1e9, max=ordered[-1] / 1e9, saves=count
    )


def writer_stats(raw: RawStats) -> WriterStats:
    """The value of a worker's raw counters."""
    submitted, saves, failed, coalesced, bytes_saved, last_error, durations = raw
    return WriterStats(
        submitted=submitted,
        saved=saves - failed,
        failed=failed,
        coalesced=coalesced,
        bytes_saved=bytes_saved,
        last_error=last_error,
        latency=summarize_latency(durations),
    )
