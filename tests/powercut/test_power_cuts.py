"""Real power cuts: a guest saving through the library, cut, checked on the host.

Run by ``.ci/powercut`` (``SESSIONSTORE_POWERCUT=1``); the main test command
skips it with that reason. ``SESSIONSTORE_LONG=1`` runs the long mode. The
model (what a cut does, what the disk drops, what counts as lost or torn, the
controls) is in this directory's README.md.

Where qemu, a tool or the kernel package cannot be had, the tests skip saying
why, except under ``CI=true``, where a missing prerequisite fails: CI installs
them, and a green run must have tested what it claims.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Final

import guest_saver
import powercut_kit
import pytest
from power_cut import FILESYSTEMS, Cut, Outcome, Series, Verdict, run_all, tools_missing
from volatile_disk import Drop

if os.environ.get("SESSIONSTORE_POWERCUT") != "1":
    pytest.skip(
        "the real power-cut suite boots qemu guests for minutes: run .ci/powercut "
        "(or set SESSIONSTORE_POWERCUT=1)",
        allow_module_level=True,
    )

LONG: Final = os.environ.get("SESSIONSTORE_LONG") == "1"
# Rounds per (filesystem, save path): 7 paths x 3 filesystems x 3 = 63 in CI.
ROUNDS: Final = 48 if LONG else 3
# Rounds a control gets on each filesystem to be caught (it stops at the first).
CONTROL_ROUNDS: Final = 12 if LONG else 3
JOBS: Final = int(os.environ.get("SESSIONSTORE_POWERCUT_JOBS", "2"))
SEED: Final = int(os.environ.get("SESSIONSTORE_POWERCUT_SEED", str(time.time_ns())))

# How each control is cut: where the broken save shows. A missing flush shows
# right after the save returned (a panic then loses the page cache and the
# disk's cache); an overwritten newest record shows when the cut tears it (a
# disk stopping mid-write, keeping part of what it cached); a lying disk loses
# everything since boot at any cut.
CONTROLS: Final = {
    guest_saver.NO_DATA_FLUSH: ((Cut.PANIC,), (Drop.ALL,)),
    guest_saver.NO_DIR_FLUSH: ((Cut.PANIC,), (Drop.ALL,)),
    guest_saver.OVERWRITE_NEWEST: ((Cut.DISK,), (Drop.PART,)),
    guest_saver.LYING_DISK: ((Cut.PANIC, Cut.KILL), (Drop.ALL, Drop.PART)),
}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"power-cut prerequisite missing in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kit() -> powercut_kit.Kit:
    reason = tools_missing()
    if reason is not None:
        _unavailable(reason)
    try:
        return powercut_kit.prepare()
    except powercut_kit.KitUnavailable as exc:
        _unavailable(f"the guest kit cannot be built: {exc}")
        raise


@pytest.fixture(scope="session")
def results() -> Path:
    """The results file of this run (JSON lines, one per round), in the cache."""
    directory = powercut_kit.cache_dir() / "results"
    directory.mkdir(parents=True, exist_ok=True)
    mode = "long" if LONG else "ci"
    return directory / f"{mode}-{time.strftime('%Y%m%dT%H%M%S')}-{SEED}.jsonl"


def _describe(outcomes: list[Outcome]) -> str:
    return "\n\n".join(
        f"[{o.round.fs} {o.round.path} {o.round.backend} cut={o.round.cut.value} "
        f"drop={o.round.drop.value} seed={o.round.seed}] {o.verdict.value}: {o.detail}"
        for o in outcomes
    )


@pytest.mark.root
def test_every_save_path_survives_power_cuts(
    kit: powercut_kit.Kit, tmp_path: Path, results: Path
) -> None:
    """Each library save path on each filesystem, ROUNDS cuts: nothing lost or torn."""
    series = [
        Series(fs, path, ROUNDS, SEED + 100 * f + i, offset=f + i)
        for f, fs in enumerate(FILESYSTEMS)
        for i, path in enumerate(guest_saver.LIBRARY_PATHS)
    ]
    outcomes = run_all(kit, series, tmp_path, JOBS, results, "library")
    failed = [o for o in outcomes if o.verdict is not Verdict.OK]
    assert not failed, _describe(failed)
    counts = Counter((o.round.fs, o.round.path) for o in outcomes)
    assert counts == dict.fromkeys(((s.fs, s.path) for s in series), ROUNDS)


@pytest.mark.root
@pytest.mark.parametrize("control", list(CONTROLS))
def test_control_is_caught(
    kit: powercut_kit.Kit, control: str, tmp_path: Path, results: Path
) -> None:
    """A broken save (or disk) loses or tears a checkpoint on some filesystem.

    If the harness could not see this, its zero losses would prove nothing.
    """
    cuts, drops = CONTROLS[control]
    lying = control == guest_saver.LYING_DISK
    series = [
        Series(
            fs,
            "replace" if lying else control,
            CONTROL_ROUNDS,
            SEED + i,
            cuts=cuts,
            drops=drops,
            lying=lying,
        )
        for i, fs in enumerate(FILESYSTEMS)
    ]
    outcomes = run_all(kit, series, tmp_path, JOBS, results, "control")
    errors = [o for o in outcomes if o.verdict is Verdict.ERROR]
    assert not errors, _describe(errors)
    caught = [o for o in outcomes if o.verdict in (Verdict.LOST, Verdict.TORN)]
    assert caught, f"{control} was not caught in {len(outcomes)} rounds:\n" + (
        _describe(outcomes)
    )
