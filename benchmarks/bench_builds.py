"""Two builds of the native extension side by side, in one process.

Loads each given build of ``sessionstore._native`` (for instance one built with
``pyo3``'s ``abi3-py310`` feature and one without) into this process, wraps
each as a backend, and times the same operations through the public API with
the builds taking turns operation by operation (their order swapped every
round), so a disturbance of the machine hits both alike. Prints the median
time per operation of each build and their ratio.

Run: ``python benchmarks/bench_builds.py A.so B.so`` (about a minute), where
each path is the extension file of one build, e.g. from
``maturin build --release`` installed into a scratch virtual environment.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import sessionstore
from sessionstore import (
    Durability,
    Layout,
    SessionStorage,
    SessionStorageRepository,
    _backend,
)

KiB: Final = 1024
MiB: Final = 1024 * KiB
MODULE: Final = "sessionstore._native"


def load_build(path: str) -> types.ModuleType:
    """The extension at ``path``, loaded under its own name beside any other."""
    loader = importlib.machinery.ExtensionFileLoader(MODULE, path)
    spec = importlib.util.spec_from_file_location(MODULE, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@contextmanager
def using(module: types.ModuleType) -> Iterator[None]:
    """Make ``module`` the extension the package imports and the backend uses."""
    sys.modules[MODULE] = module
    setattr(sessionstore, "_native", module)  # noqa: B010 - a submodule attribute
    _backend.active.current = _backend.load_native()
    yield


def measure(
    builds: dict[str, types.ModuleType],
    prepare: Prepare,
    turns: int,
) -> dict[str, float]:
    """Median ns per operation of each build; ``prepare(name)`` makes its op."""
    backends = {}
    ops = {}
    for name, module in builds.items():
        with using(module):
            backends[name] = _backend.active.current
            ops[name] = prepare(name)
            ops[name]()  # warm
    samples: dict[str, list[int]] = {name: [] for name in builds}
    names = list(builds)
    for turn in range(turns):
        for name in names if turn % 2 == 0 else names[::-1]:
            _backend.active.current = backends[name]
            op = ops[name]
            started = time.perf_counter_ns()
            op()
            samples[name].append(time.perf_counter_ns() - started)
    return {name: statistics.median(times) for name, times in samples.items()}


Prepare = Callable[[str], Callable[[], object]]


def saving(
    storages: dict[str, SessionStorage], data: bytes | bytearray | memoryview
) -> Prepare:
    """Each build's op: save ``data`` into that build's storage."""
    return lambda name: lambda: storages[name].save_checkpoint(data)


def loading(storages: dict[str, SessionStorage]) -> Prepare:
    """Each build's op: load that build's storage's checkpoint."""
    return lambda name: storages[name].load_checkpoint


def calling(op: Callable[[], object]) -> Prepare:
    """Every build's op is ``op`` (the active backend tells them apart)."""
    return lambda name: op


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="the extension file of the first build")
    parser.add_argument("second", help="the extension file of the second build")
    parser.add_argument("--tmpfs", default="/dev/shm", help="a tmpfs directory")
    parser.add_argument("--disk", default="/var/tmp", help="a directory on disk")
    args = parser.parse_args(argv)
    builds = {
        Path(args.first).name: load_build(args.first),
        Path(args.second).name: load_build(args.second),
    }
    first, second = builds
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    print(f"python {sys.version.split()[0]}; µs per operation (median)")
    print(f"{'operation':<38} {'first':>11} {'second':>11} {'second/first':>12}")
    print(f"  first: {first}\n  second: {second}")

    def row(label: str, prepare: Prepare, n: int) -> None:
        m = measure(builds, prepare, n)
        print(
            f"{label:<38} {m[first] / 1e3:>11.1f} {m[second] / 1e3:>11.1f}"
            f" {m[second] / m[first]:>12.3f}",
            flush=True,
        )

    def storages(
        base: str,
        durability: Durability = Durability.FULL,
        layout: Layout = Layout.REPLACE,
    ) -> dict[str, SessionStorage]:
        made = {}
        for name, module in builds.items():
            with using(module):
                made[name] = SessionStorage.create(
                    os.path.join(base, name.replace(".", "_")),
                    durability=durability,
                    layout=layout,
                )
        return made

    with (
        tempfile.TemporaryDirectory(dir=args.tmpfs) as shm,
        tempfile.TemporaryDirectory(dir=args.disk) as disk,
    ):
        for place, base, sizes in (
            ("tmpfs", shm, (4 * KiB, 64 * KiB, 1 * MiB)),
            ("disk", disk, (4 * KiB,)),
        ):
            for durability in Durability:
                for size in sizes:
                    data = os.urandom(size)
                    st = storages(
                        os.path.join(base, f"{durability.name}{size}"), durability
                    )
                    turns = 4000 if place == "tmpfs" and size < MiB else 400
                    row(
                        f"save {place} {durability.name} {size // KiB} KiB",
                        saving(st, data),
                        turns,
                    )
        for size in (4 * KiB, 64 * KiB, 1 * MiB):
            st = storages(os.path.join(shm, f"load{size}"))
            for s in st.values():
                s.save_checkpoint(os.urandom(size))
            row(
                f"load tmpfs {size // KiB} KiB",
                loading(st),
                4000 if size < MiB else 400,
            )
        buffers: dict[str, bytes | bytearray | memoryview] = {
            "bytearray": bytearray(64 * KiB),
            "memoryview": memoryview(bytes(64 * KiB)),
        }
        for kind, buffer in buffers.items():
            st = storages(os.path.join(shm, kind), durability=Durability.NONE)
            row(
                f"save tmpfs NONE 64 KiB {kind}",
                saving(st, buffer),
                4000,
            )
        for place, base in (("tmpfs", shm), ("disk", disk)):
            data = os.urandom(4 * KiB)
            st = storages(os.path.join(base, "slotted"), layout=Layout.SLOTTED)
            row(
                f"slotted save {place} FULL 4 KiB",
                saving(st, data),
                4000 if place == "tmpfs" else 400,
            )
        for count in (1000, 10000):
            location = os.path.join(shm, f"repository{count}")
            for _ in range(count):
                SessionStorage.create(
                    location, durability=Durability.NONE
                ).save_checkpoint(b"x" * 32)
            repo = SessionStorageRepository(location)
            row(f"get_storage_list {count}", calling(repo.get_storage_list), 60)
            row(f"scan {count}", calling(repo.scan), 30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
