"""CheckpointWriter.stats(): what a writer did, as one frozen value."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import Durability, SessionStorage, WriterStats
from sessionstore._writer_stats import LATENCY_WINDOW, summarize_latency


@pytest.fixture
def quick(backend: str, tmp_path: Path) -> SessionStorage:
    return SessionStorage.create(tmp_path / "repo", durability=Durability.NONE)


def test_a_new_writer_has_done_nothing(quick: SessionStorage) -> None:
    with quick.writer() as writer:
        stats = writer.stats()
    assert stats == WriterStats(
        submitted=0,
        saved=0,
        failed=0,
        coalesced=0,
        bytes_saved=0,
        last_error=None,
        latency=None,
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.saved = 1  # type: ignore[misc]


def test_each_flushed_checkpoint_is_counted_with_its_bytes_and_latency(
    quick: SessionStorage,
) -> None:
    sizes = [10, 4096, 100_000]
    with quick.writer() as writer:
        for size in sizes:
            writer.submit(b"x" * size)
            writer.flush()
        stats = writer.stats()
    assert (stats.submitted, stats.saved, stats.failed, stats.coalesced) == (3, 3, 0, 0)
    assert stats.bytes_saved == sum(sizes)
    assert stats.latency is not None
    assert stats.latency.saves == 3
    assert 0 < stats.latency.median <= stats.latency.p99 <= stats.latency.max < 60


def test_every_submission_is_saved_or_coalesced_away(quick: SessionStorage) -> None:
    with quick.writer() as writer:
        for n in range(2000):
            writer.submit(n.to_bytes(4, "big"))
        writer.flush()
        stats = writer.stats()
    assert stats.submitted == 2000
    assert stats.saved + stats.coalesced == 2000
    assert stats.bytes_saved == 4 * stats.saved
    assert quick.load_checkpoint() == (1999).to_bytes(4, "big")


def test_a_failed_save_is_counted_and_kept_as_the_last_error(
    quick: SessionStorage,
) -> None:
    writer = quick.writer()
    writer.submit(b"saved")
    writer.flush()
    shutil.rmtree(quick.location)
    writer.submit(b"lost")
    with pytest.raises(FileNotFoundError):
        writer.flush()
    stats = writer.stats()
    writer.close()
    assert (stats.submitted, stats.saved, stats.failed) == (2, 1, 1)
    assert isinstance(stats.last_error, FileNotFoundError)
    assert stats.last_error.filename == quick.location


def test_latency_covers_a_bounded_window_of_the_latest_saves(
    quick: SessionStorage,
) -> None:
    with quick.writer() as writer:
        for _ in range(LATENCY_WINDOW + 50):
            writer.submit(b"checkpoint")
            writer.flush()
        stats = writer.stats()
    assert stats.saved == LATENCY_WINDOW + 50
    assert stats.latency is not None
    assert stats.latency.saves == LATENCY_WINDOW


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1))
def test_the_latency_summary_is_median_nearest_rank_p99_and_max(
    durations: list[int],
) -> None:
    summary = summarize_latency(durations)
    assert summary is not None
    assert summary.median == pytest.approx(statistics.median(durations) / 1e9)
    assert summary.max == max(durations) / 1e9
    ordered = sorted(durations)
    at_or_below = sum(1 for d in ordered if d / 1e9 <= summary.p99)
    assert at_or_below >= 0.99 * len(ordered)
    below = sum(1 for d in ordered if d / 1e9 < summary.p99)
    assert below < 0.99 * len(ordered)
    assert any(d / 1e9 == summary.p99 for d in ordered)
    assert summary.median <= summary.max
    assert summary.p99 <= summary.max
    assert summary.saves == len(durations)


def test_no_durations_no_latency() -> None:
    assert summarize_latency([]) is None
