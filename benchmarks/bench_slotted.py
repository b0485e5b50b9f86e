"""Durable saves of the slotted layout beside the one-flush floor and SQLite.

Each row saves one size on the project's disk (a directory under /var/tmp), with
``Durability.FULL``, five ways taking turns batch by batch (as in
``bench_save.py``, whose sampler and C floor program this reuses):

- ``floor``: ``pwrite`` + ``fdatasync`` over a block written before, from C —
  the least any durable in-place update can cost;
- ``slotted``: the slotted layout on the native backend, one
  ``save_checkpoint`` per save (open, lock, read the slots, write, flush, close);
- ``held``: the slotted layout on the native backend through ``storage.hold()``
  (the directory opened and locked once; a save writes and flushes);
- ``fallback``: the slotted layout on the Python fallback, ``save_checkpoint``;
- ``held-py``: ``storage.hold()`` on the Python fallback;
- ``replace``: the default replace layout on the native backend;
- ``sqlite``: SQLite in WAL mode with ``synchronous=FULL`` replacing one row of
  that size (Python's ``sqlite3``, one autocommit ``UPDATE`` per save).

Consecutive saves alternate between two different checkpoints, for every
writer: SQLite writes nothing for an update that leaves the row as it was.

It prints the medians, the ratio of each to the floor, and whether the project's
targets are met, for ``save_checkpoint`` and for a held session: slotted 4 KiB
at most 1.3x the floor and faster than SQLite.

Run: ``python benchmarks/bench_slotted.py`` (5 to 30 seconds, most of it the 1 MiB
row on a slow disk; ``--budget`` scales it).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from bench_save import (
    Floor,
    KiB,
    MiB,
    fmt_time,
    fs_type,
    sample,
    size_name,
    timed,
    using,
)

from sessionstore import HeldSession, Layout, SessionStorage, _backend

SIZES: Final = (4 * KiB, 64 * KiB, 1 * MiB)
WRITERS: Final = (
    "floor",
    "slotted",
    "held",
    "fallback",
    "held-py",
    "replace",
    "sqlite",
)
# The native writers the targets apply to.
TARGETED: Final = ("slotted", "held")
# The project's targets for the native slotted save of 4 KiB.
FLOOR_LIMIT: Final = 1.3
TARGET_SIZE: Final = 4 * KiB


class SqliteRow:
    """One row of a WAL-mode, ``synchronous=FULL`` database, replaced per save."""

    def __init__(self, path: Path, size: int) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE checkpoint (id INTEGER PRIMARY KEY, data BLOB)")
        self._db.execute("INSERT INTO checkpoint VALUES (1, ?)", (b"\0" * size,))

    def save(self, data: bytes) -> None:
        self._db.execute("UPDATE checkpoint SET data = ? WHERE id = 1", (data,))

    def close(self) -> None:
        self._db.close()


class Row:
    """Everything one size needs: a session per writer, the floor's block, the row,
    and the two checkpoints saves alternate between."""

    def __init__(
        self, root: Path, size: int, backends: dict[str, _backend.Backend]
    ) -> None:
        root.mkdir()
        self.size = size
        self.checkpoints = itertools.cycle([b"\x5a" * size, b"\xa5" * size])
        self.block = str(root / "floor.block")
        self.slotted = SessionStorage.create(root / "slotted", layout=Layout.SLOTTED)
        self.fallback = SessionStorage.create(root / "fallback", layout=Layout.SLOTTED)
        self.replace = SessionStorage.create(root / "replace")
        self.sqlite = SqliteRow(root / "checkpoint.db", size)
        # A held session's writer is the backend's active when it is held.
        self.held: dict[str, HeldSession] = {}
        for writer, backend in (("held", "native"), ("held-py", "python")):
            with using(backends[backend]):
                storage = SessionStorage.create(root / writer, layout=Layout.SLOTTED)
                self.held[writer] = storage.hold()

    def close(self) -> None:
        for held in self.held.values():
            held.close()
        self.sqlite.close()


def save_once(
    floor: Floor,
    backends: dict[str, _backend.Backend],
    row: Row,
    writer: str,
    count: int,
) -> list[int]:
    """Nanoseconds of ``count`` durable saves in a row by ``writer``."""
    checkpoints = row.checkpoints
    if writer == "floor":
        return floor.flush(row.block, row.size, count)
    if writer == "sqlite":
        return timed(lambda: row.sqlite.save(next(checkpoints)), count)
    if writer in row.held:
        held = row.held[writer]
        return timed(lambda: held.save_checkpoint(next(checkpoints)), count)
    storage = {"slotted": row.slotted, "fallback": row.fallback, "replace": row.replace}
    session = storage[writer]
    backend = backends["python" if writer == "fallback" else "native"]
    with using(backend):
        return timed(lambda: session.save_checkpoint(next(checkpoints)), count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget",
        type=float,
        default=2.0,
        help="seconds of sampling per writer per size (default 2.0)",
    )
    parser.add_argument(
        "--disk",
        default="/var/tmp",
        help="a directory on the project's disk (default /var/tmp)",
    )
    parser.add_argument(
        "--cpu",
        type=int,
        default=max(os.sched_getaffinity(0)),
        help="the CPU the timed saves run on (default: the last one allowed)",
    )
    args = parser.parse_args(argv)

    backends = {"native": _backend.load_native(), "python": _backend.PYTHON}
    started = time.perf_counter()
    # The floor program inherits the pinning: every writer runs on one CPU.
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {args.cpu})
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-slotted-", dir=args.disk) as disk:
        floor = Floor(Path(disk), max(SIZES))
        try:
            for size in SIZES:
                row = Row(Path(disk) / f"row-{size}", size, backends)
                one = functools.partial(save_once, floor, backends, row)
                try:
                    results.append((size, sample(one, args.budget, WRITERS)))
                finally:
                    row.close()
        finally:
            floor.close()
            os.sched_setaffinity(0, allowed)

    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs (timed saves on CPU {args.cpu}); "
        f"disk: {args.disk} ({fs_type(args.disk)})"
    )
    print()
    print("Durable save (median per save; x = times the one-flush floor)")
    header = f"{'size':>7} {'n':>5} " + " ".join(
        f"{w:>10} {'x':>5}" if w != "floor" else f"{w:>10}" for w in WRITERS
    )
    print(header)
    print("-" * len(header))
    for size, m in results:
        cells = [f"{fmt_time(m['floor']):>10}"]
        for writer in WRITERS[1:]:
            cells.append(f"{fmt_time(m[writer]):>10} {m[writer] / m['floor']:>5.2f}")
        print(f"{size_name(size):>7} {int(m['samples']):>5} " + " ".join(cells))
    verdicts = []
    for size, m in results:
        if size != TARGET_SIZE:
            continue
        for writer in TARGETED:
            ratio = m[writer] / m["floor"]
            missed = []
            if ratio > FLOOR_LIMIT:
                missed.append(f"{ratio:.3f}x the floor > {FLOOR_LIMIT:.2f}x")
            if m[writer] >= m["sqlite"]:
                slower = f"{fmt_time(m[writer])} >= sqlite {fmt_time(m['sqlite'])}"
                missed.append(slower)
            verdict = "; ".join(missed) if missed else f"met ({ratio:.3f}x)"
            verdicts.append(f"{writer}: {verdict}")
    print()
    print(
        f"targets (4 KiB): <= {FLOOR_LIMIT:.2f}x floor and faster than sqlite: "
        + ", ".join(verdicts)
    )
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
