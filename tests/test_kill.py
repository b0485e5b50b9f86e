"""A writer SIGKILLed at random moments never tears or loses a checkpoint.

A child saves random, self-verifying checkpoints (up to 1 MiB) in a loop and is
killed after a random delay; it reports each save it starts and each one that
returned. After every kill the checkpoint on disk must be complete and be the
last one that returned or the one that was in flight, the lock must be UNLOCKED
or STALE (never HELD: the writer is gone), and after ``break_stale_lock()`` the
next save must work. ``SESSIONSTORE_LONG=1`` runs ten times as many rounds.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs
import pytest

import filesystems
from checkpoint_child import TornCheckpoint, checkpoint_id, random_checkpoint
from sessionstore import LockState, SessionStorage

CHILD: Final = str(Path(__file__).with_name("checkpoint_child.py"))
LONG: Final = os.environ.get("SESSIONSTORE_LONG") == "1"
ROUNDS: Final = 2000 if LONG else 200
# A shorter run on each real filesystem: the same checks where fsync and rename
# go through a journal on a block device.
FILESYSTEM_ROUNDS: Final = 300 if LONG else 30
# One FULL save of a 1 MiB checkpoint takes about 10 ms here, so a delay of up to
# 30 ms lands anywhere in the first few saves: before the first one, inside one
# (any step), or between two.
MAX_DELAY_US: Final = 30_000
# The parent's own save after each round is small: it only has to work.
_PARENT_SAVE_MAX: Final = 4096


@attrs.frozen
class Report:
    """What a killed worker said: the saves it started and those that returned."""

    started: tuple[str, ...]
    returned: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Report:
        started: list[str] = []
        returned: list[str] = []
        for line in text.splitlines():
            kind, name = line.split(" ", 1)
            if kind == "E":
                pytest.fail(f"the worker's save failed: {name}")
            assert kind in ("S", "D"), f"bad report line {line!r}"
            if kind == "S":
                assert len(started) == len(returned), f"S twice in a row: {text}"
                started.append(name)
            else:
                assert started[len(returned) :] == [name], f"D without its S: {text}"
                returned.append(name)
        return cls(tuple(started), tuple(returned))

    def acceptable(self, before: str | None) -> set[str | None]:
        """The checkpoints a load may return: the last that returned, or in flight."""
        last = self.returned[-1] if self.returned else before
        if len(self.started) > len(self.returned):
            return {last, self.started[-1]}
        return {last}


class KillServer:
    """The fork server of ``checkpoint_child.py`` for one session and backend."""

    def __init__(self, location: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, CHILD, "kill", location],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        self.ready = self.process.stdout.readline()

    def kill_after(
        self, seed: int, delay_us: int, durability: str, report: Path
    ) -> None:
        """Fork a worker, SIGKILL it after ``delay_us``, return once it is reaped."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{seed} {delay_us} {durability} {report}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        assert answer == "killed\n", f"the worker was not killed: {answer!r}"

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def kill_rounds(
    storage: SessionStorage,
    backend: str,
    env: dict[str, str],
    rounds: int,
    workdir: Path,
) -> Counter[str]:
    """Run ``rounds`` kills on ``storage``, check each, and count what they hit."""
    server = KillServer(storage.location, env)
    try:
        assert server.ready == f"ready {backend}\n"
        return _check_rounds(storage, server, rounds, workdir)
    finally:
        server.close()


def _check_rounds(
    storage: SessionStorage, server: KillServer, rounds: int, workdir: Path
) -> Counter[str]:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    current: str | None = None  # nothing saved yet: an empty load is right
    seen: Counter[str] = Counter()
    for round_ in range(rounds):
        where = f"seed {seed}, round {round_}"
        report_path = workdir / f"report-{round_}"
        durability = rng.choice(("full", "none"))
        server.kill_after(
            rng.randrange(2**32), rng.randrange(MAX_DELAY_US), durability, report_path
        )
        report = Report.parse(report_path.read_text() if report_path.exists() else "")
        try:
            loaded = checkpoint_id(storage.load_checkpoint())
        except TornCheckpoint as torn:
            pytest.fail(f"{where}: torn checkpoint after a kill: {torn}")
        assert loaded in report.acceptable(current), f"{where}: not a saved checkpoint"
        if current is not None:
            assert loaded is not None, f"{where}: the checkpoint is gone"
        last = report.returned[-1] if report.returned else current
        seen["in flight" if loaded != last else "last"] += 1

        state = storage.lock_state()
        seen[state.value] += 1
        assert state in (LockState.UNLOCKED, LockState.STALE), f"{where}: {state}"
        assert (state is LockState.STALE) == os.path.exists(storage.paths.next), where
        assert storage.break_stale_lock() is (state is LockState.STALE), where
        assert storage.lock_state() is LockState.UNLOCKED, where

        data = random_checkpoint(rng, _PARENT_SAVE_MAX)
        storage.save_checkpoint(data)
        current = checkpoint_id(data)
        seen["saves before the kill"] += len(report.returned)
    return seen


def test_a_writer_killed_at_random_moments_never_tears_or_loses_a_checkpoint(
    storage: SessionStorage, backend: str, backend_env: dict[str, str], tmp_path: Path
) -> None:
    seen = kill_rounds(storage, backend, backend_env, ROUNDS, tmp_path)
    # The kills must have landed inside saves, or this test proved nothing.
    assert seen["stale"] > 0, seen
    assert seen["in flight"] > 0, seen
    print(f"{backend}: {ROUNDS} kills, {dict(seen)}")


@pytest.fixture(scope="module", params=filesystems.LOOP_KINDS)
def mount(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[filesystems.Mount]:
    yield from filesystems.mount_or_skip(request.param, tmp_path_factory)


@pytest.mark.root
def test_kills_on_each_filesystem_never_tear_or_lose_a_checkpoint(
    mount: filesystems.Mount, backend: str, backend_env: dict[str, str], tmp_path: Path
) -> None:
    storage = SessionStorage.create(mount.root / f"kill-{backend}")
    seen = kill_rounds(storage, backend, backend_env, FILESYSTEM_ROUNDS, tmp_path)
    print(f"{backend} on {mount.kind}: {FILESYSTEM_ROUNDS} kills, {dict(seen)}")
