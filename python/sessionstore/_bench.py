"""The save benchmark ``sessionstore bench`` runs: per-save latency on a real disk.

It measures what a harness pays per checkpoint on the machine and directory it
will use, with the active backend, durable and not, for a few sizes. The cells
are measured interleaved, one timed save of each per round (after an untimed
one of the same cell), so a disk that gets busy or a clock that slows down
affects every cell alike.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Final

import attrs

from ._options import Durability
from ._storage import SessionStorage

DEFAULT_SIZES: Final = (1 << 10, 64 << 10, 1 << 20)
# Seconds of measuring by default: enough for tens of durable saves per cell on
# a slow disk, short enough to run without thinking about it.
DEFAULT_BUDGET: Final = 6.0
# Every cell gets at least this many saves, whatever the budget, so a median
# means something even on a disk that takes a second per flush.
MIN_SAVES: Final = 5
# No cell needs more saves than this for a stable median; stops early on tmpfs.
MAX_SAVES: Final = 2000
DURABILITIES: Final = (Durability.FULL, Durability.NONE)


@attrs.frozen
class BenchRow:
    """The latencies of one cell: a checkpoint size and a durability."""

    size: int
    durability: Durability
    saves: int
    median: float
    """seconds"""
    p90: float
    """seconds"""


def summarize(
    size: int, durability: Durability, latencies: Sequence[float]
) -> BenchRow:
    """One cell's row from its per-save latencies (seconds)."""
    ordered = sorted(latencies)
    p90 = ordered[min(len(ordered) - 1, (len(ordered) * 9) // 10)]
    return BenchRow(size, durability, len(ordered), statistics.median(ordered), p90)


def missing_directories(path: str) -> list[str]:
    """``path`` and its ancestors that do not exist, innermost first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def run_save_benchmark(
    base_dir: str,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    budget: float = DEFAULT_BUDGET,
    started: Callable[[str], None] = lambda location: None,
) -> list[BenchRow]:
    """Save into a new session in ``base_dir`` for about ``budget`` seconds.

    The session is removed afterwards, also when a save fails, and so are the
    directories made for it (``base_dir`` and parents that did not exist).
    ``started`` is told its location before the first save. Rows come size by
    size, durable first.
    """
    missing = missing_directories(base_dir)
    # The payloads first: a size too large for memory fails before the disk is
    # touched, so nothing is left behind.
    payloads = {size: os.urandom(size) for size in sizes}
    session = SessionStorage.create(base_dir, prefix="bench-")
    storages = {d: SessionStorage(session.location, durability=d) for d in DURABILITIES}
    cells = [(size, d) for size in sizes for d in DURABILITIES]
    latencies: dict[tuple[int, Durability], list[float]] = {cell: [] for cell in cells}
    try:
        started(session.location)
        deadline = time.perf_counter() + budget
        rounds = 0
        while rounds < MAX_SAVES and (
            rounds < MIN_SAVES or time.perf_counter() < deadline
        ):
            for size, durability in cells:
                storage, data = storages[durability], payloads[size]
                # Untimed: it pays for what the previous cell left behind
                # (dirty pages a journal commit must write first, blocks of a
                # bigger checkpoint to free), which is not this cell's cost.
                storage.save_checkpoint(data)
                begin = time.perf_counter()
                storage.save_checkpoint(data)
                latencies[size, durability].append(time.perf_counter() - begin)
            rounds += 1
    finally:
        session.remove()
        for path in missing:
            os.rmdir(path)
    return [summarize(size, d, latencies[size, d]) for size, d in cells]
