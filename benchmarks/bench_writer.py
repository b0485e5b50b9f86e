"""What a harness pays per checkpoint with a CheckpointWriter, per writer backend.

Measures, in rounds that alternate the backends so both see the same disk and
the same load:

- the latency of one ``submit()`` of a 4 KiB checkpoint (median and 99th
  percentile over a run of submissions; includes one ``perf_counter_ns`` call);
- a harness loop of 10,000 submissions to a durable writer, then ``flush()``:
  the loop's time, the flush's time, how many saves actually ran, and a check
  that the last checkpoint is the one loaded;
- for scale, one synchronous durable ``save_checkpoint()`` of the same size.

Sessions are made on the project's disk (the directory holding this script's
project) unless ``--dir`` says otherwise.

Run: ``python benchmarks/bench_writer.py [--rounds N] [--dir PATH]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import attrs

from sessionstore import SessionStorage, _backend

CHECKPOINT_SIZE: Final = 4096
HARNESS_SUBMITS: Final = 10_000
SYNC_SAVES: Final = 30
# The project's targets (docs/performance.md), printed next to the figures.
SUBMIT_TARGET_US: Final = 5.0
HARNESS_TARGET_S: Final = 0.2
PROJECT_DIR: Final = Path(__file__).resolve().parent.parent


@attrs.frozen
class Round:
    """One backend's figures in one round."""

    submit_median_us: float
    submit_p99_us: float
    loop_s: float
    flush_ms: float
    saves: int
    sync_save_ms: float


def available_backends() -> dict[str, _backend.Backend]:
    """The backends this build can run: the fallback, and the extension if built."""
    found = {"python": _backend.PYTHON}
    try:
        found["native"] = _backend.load_native()
    except ImportError as exc:
        print(f"native backend unavailable ({exc}); measuring the fallback only")
    return found


def make_checkpoints(count: int) -> list[bytes]:
    """``count`` distinct 4 KiB checkpoints, built before anything is timed."""
    filler = os.urandom(CHECKPOINT_SIZE)
    return [number.to_bytes(8, "big") + filler[8:] for number in range(count)]


def submit_latencies(
    storage: SessionStorage, checkpoints: Sequence[bytes]
) -> list[int]:
    """Nanoseconds of each ``submit()``, the writer saving in the background."""
    clock = time.perf_counter_ns
    latencies = []
    with storage.writer() as writer:
        for data in checkpoints:
            start = clock()
            writer.submit(data)
            latencies.append(clock() - start)
    return latencies


def harness_loop(
    storage: SessionStorage, checkpoints: Sequence[bytes]
) -> tuple[float, float, int]:
    """Seconds of the submission loop, seconds of the flush, and saves that ran."""
    clock = time.perf_counter
    with storage.writer() as writer:
        start = clock()
        for data in checkpoints:
            writer.submit(data)
        submitted = clock()
        writer.flush()
        flushed = clock()
        saves = writer.saves
    loaded = storage.load_checkpoint()
    if loaded != checkpoints[-1]:
        raise AssertionError(
            f"after flush, loaded {loaded[:8]!r}…, not the last checkpoint"
        )
    return submitted - start, flushed - submitted, saves


def sync_save_seconds(storage: SessionStorage, data: bytes) -> float:
    """Median seconds of one synchronous durable save."""
    timings = []
    for _ in range(SYNC_SAVES):
        start = time.perf_counter()
        storage.save_checkpoint(data)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def measure(base: Path, checkpoints: Sequence[bytes]) -> Round:
    """One round of every figure on the active backend, each in a fresh session."""
    latencies = sorted(submit_latencies(SessionStorage.create(base), checkpoints))
    loop_s, flush_s, saves = harness_loop(SessionStorage.create(base), checkpoints)
    sync_s = sync_save_seconds(SessionStorage.create(base), checkpoints[0])
    return Round(
        submit_median_us=statistics.median(latencies) / 1e3,
        submit_p99_us=latencies[len(latencies) * 99 // 100] / 1e3,
        loop_s=loop_s,
        flush_ms=flush_s * 1e3,
        saves=saves,
        sync_save_ms=sync_s * 1e3,
    )


def median_of(rounds: Sequence[Round], field: Callable[[Round], float]) -> float:
    return statistics.median(field(r) for r in rounds)


def submit_us(figures: Round) -> float:
    return figures.submit_median_us


def loop_s(figures: Round) -> float:
    return figures.loop_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per backend")
    parser.add_argument(
        "--dir",
        type=Path,
        default=PROJECT_DIR,
        help="where the benchmark's sessions are made (default: the project's disk)",
    )
    args = parser.parse_args()
    backends = available_backends()
    checkpoints = make_checkpoints(HARNESS_SUBMITS)
    results: dict[str, list[Round]] = {name: [] for name in backends}
    previous = _backend.active.current
    with tempfile.TemporaryDirectory(prefix=".bench-writer-", dir=args.dir) as tmp:
        base = Path(tmp)
        try:
            for number in range(args.rounds):
                # Alternate which backend goes first, so neither always runs on a
                # disk the other has just warmed or dirtied.
                order = list(backends) if number % 2 == 0 else list(reversed(backends))
                for name in order:
                    _backend.active.current = backends[name]
                    results[name].append(measure(base, checkpoints))
        finally:
            _backend.active.current = previous
    print(
        f"{args.rounds} rounds, {CHECKPOINT_SIZE} B checkpoints, durable saves, "
        f"sessions under {args.dir}"
    )
    header = (
        f"{'backend':<8} {'submit median':>14} {'submit p99':>11} "
        f"{'10k loop':>9} {'flush':>8} {'saves':>6} {'sync save':>10}"
    )
    print(header)
    for name, rounds in results.items():
        print(
            f"{name:<8} {median_of(rounds, submit_us):>11.2f} us"
            f" {median_of(rounds, lambda r: r.submit_p99_us):>8.2f} us"
            f" {median_of(rounds, loop_s):>7.3f} s"
            f" {median_of(rounds, lambda r: r.flush_ms):>5.2f} ms"
            f" {median_of(rounds, lambda r: r.saves):>6.0f}"
            f" {median_of(rounds, lambda r: r.sync_save_ms):>7.2f} ms"
        )
    if "native" in results:
        native, python = results["native"], results["python"]
        submit_ratio = median_of(native, submit_us) / median_of(python, submit_us)
        loop_ratio = median_of(native, loop_s) / median_of(python, loop_s)
        print(
            f"native/python: submit median {submit_ratio:.2f}x, "
            f"10k loop {loop_ratio:.2f}x"
        )
    for name, rounds in results.items():
        submit, loop = median_of(rounds, submit_us), median_of(rounds, loop_s)
        submit_verdict = "meets" if submit <= SUBMIT_TARGET_US else "misses"
        loop_verdict = "meets" if loop < HARNESS_TARGET_S else "misses"
        print(
            f"{name}: submit median {submit:.2f} us ({submit_verdict} the target of "
            f"<= {SUBMIT_TARGET_US} us); 10k loop {loop:.3f} s ({loop_verdict} the "
            f"target of < {HARNESS_TARGET_S} s); last checkpoint loaded after flush"
        )


if __name__ == "__main__":
    main()
