"""Listing a repository of 1k, 10k and 100k sessions: sessionstore beside plainbox 0.38.

For each size one repository is built (each session holding a checkpoint), and
plainbox's ``get_storage_list()``, sessionstore's ``get_storage_list()`` and
sessionstore's ``scan()`` (which also reads sizes and lock states) take turns on
that same directory, round after round, so a disturbance of the machine hits all
three alike. The table reports medians, the cost per session, and how many
times faster than plainbox sessionstore lists.

plainbox is never a dependency of sessionstore: the script installs
``plainbox==0.38.0`` into a virtual environment of its own (``--venv``, made on
first use) and imports it from there. Where its dependencies do not install,
it falls back to the one module it needs, ``plainbox/impl/session/storage.py``
from the sdist, with plainbox's i18n and runner modules stubbed; the output
says which.

Then ``scan()`` of three slotted sessions is timed for checkpoints of 1 KiB and
100 MiB (``--slotted-sizes``): a listing's cost should not grow with the
checkpoints' size.

Run: ``python benchmarks/bench_listing.py`` (about a minute, most of it building
the 100k repository; ``--sizes 1000,10000`` for a quick look).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import sessionstore
from sessionstore import Durability, SessionStorage, SessionStorageRepository

PLAINBOX: Final = "plainbox==0.38.0"
DEFAULT_VENV: Final = Path(tempfile.gettempdir()) / "sessionstore-bench-plainbox"
DEFAULT_SIZES: Final = (1_000, 10_000, 100_000)
# Enough rounds for a stable median; fewer for the big repository, where one
# round already lists 100k sessions three times.
ROUNDS: Final = {1_000: 101, 10_000: 31, 100_000: 5}
TARGET_RATIO: Final = 3.0
TARGET_SIZE: Final = 10_000


def _site_packages(venv: Path) -> str:
    relative = os.path.relpath(
        sysconfig.get_path("purelib"), sysconfig.get_config_var("base")
    )
    return str(venv / relative)


def _plainbox_from_venv(venv: Path) -> type[Any]:
    """plainbox's repository class, from a venv made (once) for this benchmark."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = _site_packages(venv)
    if not Path(site, "plainbox").is_dir():
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", PLAINBOX],
            check=True,
        )
    sys.path.append(site)
    from plainbox.impl.session.storage import (  # type: ignore[import-not-found]
        SessionStorageRepository as PlainboxRepository,
    )

    return PlainboxRepository  # type: ignore[no-any-return]


def _plainbox_from_sdist(venv: Path) -> type[Any]:
    """The one module, from the sdist, with what it imports from plainbox stubbed."""
    sdist_dir = venv / "sdist"
    sdist_dir.mkdir(parents=True, exist_ok=True)
    archives = list(sdist_dir.glob("plainbox-0.38.0.tar.gz"))
    if not archives:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                str(sdist_dir),
                PLAINBOX,
            ],
            check=True,
        )
        archives = list(sdist_dir.glob("plainbox-0.38.0.tar.gz"))
    member = "plainbox-0.38.0/plainbox/impl/session/storage.py"
    with tarfile.open(archives[0]) as archive:
        extracted = archive.extractfile(member)
        assert extracted is not None, f"{member} missing from {archives[0]}"
        source = extracted.read()
    module_path = sdist_dir / "plainbox_storage.py"
    module_path.write_bytes(source)
    i18n = types.ModuleType("plainbox.i18n")
    i18n.gettext = lambda text: text  # type: ignore[attr-defined]
    i18n.ngettext = lambda one, many, n: one if n == 1 else many  # type: ignore[attr-defined]
    runner = types.ModuleType("plainbox.impl.runner")
    runner.slugify = lambda text: text  # type: ignore[attr-defined]
    for name in ("plainbox", "plainbox.impl"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["plainbox.i18n"] = i18n
    sys.modules["plainbox.impl.runner"] = runner
    spec = importlib.util.spec_from_file_location("plainbox_storage", module_path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SessionStorageRepository  # type: ignore[no-any-return]


def load_plainbox(venv: Path) -> tuple[type[Any], str]:
    """plainbox's repository class and a line saying where it came from."""
    try:
        return _plainbox_from_venv(venv), f"{PLAINBOX} installed in the venv {venv}"
    except (subprocess.CalledProcessError, ImportError) as exc:
        print(f"plainbox does not install or import here ({exc}); using the sdist")
        return (
            _plainbox_from_sdist(venv),
            f"plainbox/impl/session/storage.py of the {PLAINBOX} sdist, "
            "plainbox.i18n and plainbox.impl.runner stubbed",
        )


def build_repository(base: Path, count: int) -> Path:
    """``count`` sessions, each with a small checkpoint, made as a harness would."""
    repo = base / f"repo-{count}"
    for i in range(count):
        storage = SessionStorage.create(repo, durability=Durability.NONE)
        storage.save_checkpoint(b"checkpoint %d" % i)
    return repo


def measure(
    contestants: dict[str, Callable[[], Sequence[object]]], rounds: int
) -> dict[str, float]:
    """Median seconds per call of each contestant, taking turns call by call."""
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, call in contestants.items():
            begin = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - begin)
    return {name: statistics.median(samples) for name, samples in times.items()}


def check_same_listing(plainbox: Any, ours: SessionStorageRepository) -> None:
    """Both list the same sessions, youngest first; the scan lists them too (in
    the order of their checkpoints' ages, which may tie differently)."""
    theirs = [s.location for s in plainbox.get_storage_list()]
    listed = [s.location for s in ours.get_storage_list()]
    infos = ours.scan()
    assert sorted(theirs) == sorted(listed), "plainbox and sessionstore differ"
    assert sorted(listed) == sorted(i.location for i in infos), "scan() differs"
    mtimes = [os.stat(location).st_mtime_ns for location in listed]
    assert mtimes == sorted(mtimes, reverse=True), "not youngest first"
    ages = [i.modified for i in infos]
    assert ages == sorted(ages, reverse=True), "scan() not youngest first"


SLOTTED_SESSIONS: Final = 3
SLOTTED_ROUNDS: Final = 21


def _slotted_layout() -> dict[str, Any]:
    # Layout is imported by name so the script also measures versions without it.
    layout = getattr(sessionstore, "Layout", None)
    return {} if layout is None else {"layout": layout.SLOTTED}


def measure_slotted(base: Path, sizes: Sequence[int]) -> None:
    """``scan()`` of a few slotted sessions whose checkpoints are of each size.

    What a listing costs should not grow with the checkpoints' size: it needs
    what the headers say, not the records.
    """
    print()
    print(f"scan() of {SLOTTED_SESSIONS} slotted sessions, by checkpoint size")
    print(f"{'checkpoint':>10}  {'scan':>10}  {'vs smallest':>11}")
    first = None
    for size in sizes:
        repo = base / f"slotted-{size}"
        for _ in range(SLOTTED_SESSIONS):
            storage = SessionStorage.create(repo, **_slotted_layout())
            storage.save_checkpoint(b"s" * size)
            storage.save_checkpoint(b"t" * size)  # in place, into the other slot
        ours = SessionStorageRepository(repo)
        assert [i.checkpoint_size for i in ours.scan()] == [size] * SLOTTED_SESSIONS
        median = measure({"scan": ours.scan}, SLOTTED_ROUNDS)["scan"]
        first = median if first is None else first
        print(
            f"{size:>10}  {median * 1e3:>8.2f}ms  {median / first:>10.1f}x",
            flush=True,
        )
        shutil.rmtree(repo)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=DEFAULT_SIZES,
        help="repository sizes, comma-separated (default: 1000,10000,100000)",
    )
    parser.add_argument(
        "--slotted-sizes",
        type=lambda text: tuple(int(n) for n in text.split(",") if n),
        default=(1 << 10, 100 << 20),
        help="checkpoint sizes in bytes of the slotted scan (default: 1 KiB, 100 MiB)"
        "; empty for none",
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument(
        "--dir", type=Path, help="where to build the repositories (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    plainbox_repository, origin = load_plainbox(args.venv)
    print(f"plainbox: {origin}")
    python = sys.version.split()[0]
    print(f"sessionstore: {sessionstore.backend} backend, Python {python}")
    base = Path(tempfile.mkdtemp(prefix="bench-listing-", dir=args.dir))
    print(f"repositories in {base} (warm cache: each is listed once before timing)")
    print()
    header = (
        f"{'sessions':>8}  {'plainbox':>10}  {'get_storage_list':>16}  {'scan':>10}"
        f"  {'per session (pb / gsl / scan)':>30}  {'pb/gsl':>6}  {'pb/scan':>7}"
    )
    print(header)
    ratios = {}
    try:
        for count in args.sizes:
            repo = build_repository(base, count)
            theirs = plainbox_repository(str(repo))
            ours = SessionStorageRepository(repo)
            check_same_listing(theirs, ours)
            medians = measure(
                {
                    "plainbox": theirs.get_storage_list,
                    "get_storage_list": ours.get_storage_list,
                    "scan": ours.scan,
                },
                ROUNDS.get(count, 11),
            )
            pb, gsl, scan = (
                medians["plainbox"],
                medians["get_storage_list"],
                medians["scan"],
            )
            ratios[count] = pb / gsl
            per = " / ".join(f"{t / count * 1e6:.2f}" for t in (pb, gsl, scan))
            print(
                f"{count:>8}  {pb * 1e3:>8.1f}ms  {gsl * 1e3:>14.1f}ms"
                f"  {scan * 1e3:>8.1f}ms  {per + ' us':>30}"
                f"  {pb / gsl:>5.1f}x  {pb / scan:>6.1f}x",
                flush=True,
            )
            shutil.rmtree(repo)
        if args.slotted_sizes:
            measure_slotted(base, args.slotted_sizes)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if TARGET_SIZE in ratios:
        verdict = "met" if ratios[TARGET_SIZE] >= TARGET_RATIO else "NOT met"
        print()
        print(
            f"target: get_storage_list >= {TARGET_RATIO:g}x faster than plainbox at "
            f"{TARGET_SIZE} sessions: {ratios[TARGET_SIZE]:.1f}x, {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
