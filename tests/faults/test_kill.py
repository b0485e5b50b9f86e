"""A writer SIGKILLed at random moments never tears or loses a checkpoint.

A child saves random, self-verifying checkpoints (up to 1 MiB) in a loop and is
killed after a random delay; it reports each save it starts and each one that
returned. After every kill the checkpoint on disk must be complete and be the
last one that returned or the one that was in flight, the lock must be UNLOCKED
or STALE (never HELD: the writer is gone), and after ``break_stale_lock()`` the
next save must work. Both layouts; in the slotted one ``load_previous()`` must
give the checkpoint saved before the loaded one (None only when the killed save
tore the slot that held it).

A child converting the session between the layouts, back and forth, is killed
the same way: after every kill the checkpoint loads unchanged, the lock is
UNLOCKED or STALE, and (after ``break_stale_lock()``) one more
``convert_layout()`` call, to either layout, finishes the job: only that
layout's file is left, holding the same checkpoint.

``SESSIONSTORE_LONG=1`` runs ten times as many rounds.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import attrs
import pytest

import filesystems
from checkpoint_child import TornCheckpoint, checkpoint_id, random_checkpoint
from sessionstore import Durability, Layout, LockState, SessionStorage
from sessionstore._naming import CHECKPOINT_NAME, SLOTS_NAME

CHILD: Final = str(Path(__file__).parents[1] / "checkpoint_child.py")
LONG: Final = os.environ.get("SESSIONSTORE_LONG") == "1"
ROUNDS: Final = 2000 if LONG else 200
# Each conversion round also saves and converts once more in the parent.
CONVERSION_ROUNDS: Final = 2000 if LONG else 200
# A shorter run on each real filesystem: the same checks where fsync and rename
# go through a journal on a block device.
FILESYSTEM_ROUNDS: Final = 300 if LONG else 30
# A delay of up to 30 ms spans the first few FULL saves of a 1 MiB checkpoint
# (docs/performance.md gives their cost), so it lands anywhere in them: before
# the first one, inside one (any step), or between two.
MAX_DELAY_US: Final = 30_000
# The parent's own save after each round is small: it only has to work.
_PARENT_SAVE_MAX: Final = 4096
# Conversions copy the checkpoint: larger ones keep the copy inside the window.
_CONVERTED_MAX: Final = 256 * 1024
# How often a slotted session is shrunk back to 4 KiB slots between rounds.
_SHRINK: Final = 0.25
FILE_OF: Final = {Layout.REPLACE: CHECKPOINT_NAME, Layout.SLOTTED: SLOTS_NAME}
# Kills inside a slotted rebuild are rare (a few in 200 rounds, sometimes none):
# a test that needs some runs on, up to this many times its rounds, until it
# has them.
_MAX_ROUNDS_FACTOR: Final = 5


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

    @property
    def in_flight(self) -> bool:
        return len(self.started) > len(self.returned)

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
        self,
        seed: int,
        delay_us: int,
        storage: SessionStorage,
        action: str,
        report: Path,
    ) -> None:
        """Fork a worker, SIGKILL it after ``delay_us``, return once it is reaped.

        The worker saves (``action`` "save") or converts ("convert") with
        ``storage``'s durability and layout.
        """
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        durability, layout = storage.durability.value, storage.layout.value
        self.process.stdin.write(
            f"{seed} {delay_us} {durability} {layout} {action} {report}\n"
        )
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
    action: str = "save",
    covered: Callable[[Counter[str]], bool] = lambda seen: True,
) -> Counter[str]:
    """Run ``rounds`` kills on ``storage``, check each, and count what they hit.

    The worker saves with ``save_checkpoint`` (``action`` "save") or through a
    held session ("hold"). While ``covered(seen)`` is false, more rounds follow,
    up to ``_MAX_ROUNDS_FACTOR`` times ``rounds``; ``seen["rounds"]`` says how
    many ran.
    """
    server = KillServer(storage.location, env)
    try:
        assert server.ready == f"ready {backend}\n"
        return _check_rounds(storage, server, rounds, workdir, action, covered)
    finally:
        server.close()


def _check_rounds(
    storage: SessionStorage,
    server: KillServer,
    rounds: int,
    workdir: Path,
    action: str,
    covered: Callable[[Counter[str]], bool],
) -> Counter[str]:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    # Every checkpoint that became the current one, in order; None: none yet.
    chain: list[str | None] = [None]
    seen: Counter[str] = Counter()
    for round_ in range(rounds * _MAX_ROUNDS_FACTOR):
        if round_ >= rounds and covered(seen):
            break
        seen["rounds"] += 1
        where = f"seed {seed}, round {round_}"
        report_path = workdir / f"report-{round_}"
        worker = attrs.evolve(storage, durability=rng.choice(list(Durability)))
        server.kill_after(
            rng.randrange(2**32),
            rng.randrange(MAX_DELAY_US),
            worker,
            action,
            report_path,
        )
        report = Report.parse(report_path.read_text() if report_path.exists() else "")
        try:
            loaded = checkpoint_id(storage.load_checkpoint())
            previous = _id_or_none(storage.load_previous())
        except TornCheckpoint as torn:
            pytest.fail(f"{where}: torn checkpoint after a kill: {torn}")
        assert loaded in report.acceptable(chain[-1]), f"{where}: not a saved one"
        if chain[-1] is not None:
            assert loaded is not None, f"{where}: the checkpoint is gone"
        chain += report.returned
        in_flight = report.started[-1] if report.in_flight else None
        seen["in flight" if loaded == in_flight else "last"] += 1
        if loaded == in_flight:
            chain.append(in_flight)
        assert previous in _previous_allowed(storage, chain, in_flight, loaded), where
        seen["previous kept" if previous is not None else "no previous"] += 1

        state = storage.lock_state()
        seen[state.value] += 1
        assert state in (LockState.UNLOCKED, LockState.STALE), f"{where}: {state}"
        assert (state is LockState.STALE) == os.path.exists(storage.paths.next), where
        assert storage.break_stale_lock() is (state is LockState.STALE), where
        assert storage.lock_state() is LockState.UNLOCKED, where

        data = random_checkpoint(rng, _PARENT_SAVE_MAX)
        storage.save_checkpoint(data)
        chain.append(checkpoint_id(data))
        assert _id_or_none(storage.load_previous()) in _previous_allowed(
            storage, chain, None, chain[-1]
        ), f"{where}: the save after recovery lost the previous generation"
        if storage.layout is Layout.SLOTTED and rng.random() < _SHRINK:
            # Rebuilt for the small checkpoint, the slots file is too small for
            # the worker's next save, which then rebuilds it again.
            storage.convert_layout(Layout.REPLACE).convert_layout(Layout.SLOTTED)
            chain = [None, chain[-1]]
        seen["saves before the kill"] += len(report.returned)
    return seen


def _id_or_none(data: bytes | None) -> str | None:
    return None if data is None else checkpoint_id(data)


def _previous_allowed(
    storage: SessionStorage,
    chain: list[str | None],
    in_flight: str | None,
    loaded: str | None,
) -> set[str | None]:
    """What ``load_previous()`` may give with ``loaded`` the current checkpoint.

    ``chain`` ends with ``loaded``. The slotted layout keeps the one before it;
    a save killed in flight (and not loaded) may have torn the slot of that one.
    """
    if storage.layout is Layout.REPLACE:
        return {None}
    assert chain[-1] == loaded
    before = chain[-2] if len(chain) > 1 else None
    if in_flight is not None and loaded != in_flight:
        return {before, None}
    return {before}


@pytest.fixture(params=list(Layout))
def layout(request: pytest.FixtureRequest) -> Layout:
    value: Layout = request.param
    return value


def test_a_writer_killed_at_random_moments_never_tears_or_loses_a_checkpoint(
    backend: str,
    backend_env: dict[str, str],
    layout: Layout,
    tmp_path: Path,
) -> None:
    storage = SessionStorage.create(tmp_path / "repo", layout=layout)

    # The kills must have landed inside saves (in a slotted session, inside
    # rebuilds too), or this test proved nothing.
    def covered(seen: Counter[str]) -> bool:
        return seen["stale"] > 0 and seen["in flight"] > 0

    seen = kill_rounds(storage, backend, backend_env, ROUNDS, tmp_path, covered=covered)
    assert covered(seen), seen
    print(f"{backend}, {layout.value}: {dict(seen)}")


def test_a_held_session_killed_at_random_moments_never_tears_or_loses_a_checkpoint(
    backend: str,
    backend_env: dict[str, str],
    layout: Layout,
    tmp_path: Path,
) -> None:
    """The worker holds the session and saves through it until killed: the
    kernel releases the lock with the process, and nothing is torn or lost."""
    storage = SessionStorage.create(tmp_path / "repo", layout=layout)
    seen = kill_rounds(storage, backend, backend_env, ROUNDS, tmp_path, "hold")
    assert seen["in flight"] > 0, seen
    assert seen["saves before the kill"] > 0, seen
    print(f"{backend}, {layout.value}, held: {ROUNDS} kills, {dict(seen)}")


@pytest.fixture(scope="module", params=filesystems.LOOP_KINDS)
def mount(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[filesystems.Mount]:
    yield from filesystems.mount_or_skip(request.param, tmp_path_factory)


@pytest.mark.root
def test_kills_on_each_filesystem_never_tear_or_lose_a_checkpoint(
    mount: filesystems.Mount,
    backend: str,
    backend_env: dict[str, str],
    layout: Layout,
    tmp_path: Path,
) -> None:
    storage = SessionStorage.create(
        mount.root / f"kill-{backend}-{layout.value}", layout=layout
    )
    seen = kill_rounds(storage, backend, backend_env, FILESYSTEM_ROUNDS, tmp_path)
    print(
        f"{backend}, {layout.value} on {mount.kind}: {FILESYSTEM_ROUNDS} kills, "
        f"{dict(seen)}"
    )


@pytest.mark.root
def test_conversions_killed_on_each_filesystem_keep_the_checkpoint(
    mount: filesystems.Mount, backend: str, backend_env: dict[str, str], tmp_path: Path
) -> None:
    storage = SessionStorage.create(mount.root / f"convert-{backend}")
    rounds = FILESYSTEM_ROUNDS
    seen = conversion_rounds(storage, backend, backend_env, rounds, tmp_path)
    print(f"{backend} on {mount.kind}: {rounds} kills while converting, {dict(seen)}")


def conversion_rounds(
    storage: SessionStorage,
    backend: str,
    env: dict[str, str],
    rounds: int,
    workdir: Path,
) -> Counter[str]:
    """Kill a converting worker ``rounds`` times, check and finish each time."""
    server = KillServer(storage.location, env)
    try:
        assert server.ready == f"ready {backend}\n"
        return _check_conversions(storage, server, rounds, workdir)
    finally:
        server.close()


def _check_conversions(
    storage: SessionStorage, server: KillServer, rounds: int, workdir: Path
) -> Counter[str]:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    data = random_checkpoint(rng, _CONVERTED_MAX)
    storage.save_checkpoint(data)
    current = checkpoint_id(data)
    seen: Counter[str] = Counter()
    for round_ in range(rounds):
        where = f"seed {seed}, round {round_}"
        report_path = workdir / f"report-{round_}"
        worker = attrs.evolve(storage, durability=rng.choice(list(Durability)))
        server.kill_after(
            rng.randrange(2**32),
            rng.randrange(MAX_DELAY_US),
            worker,
            "convert",
            report_path,
        )
        lines = report_path.read_text().splitlines() if report_path.exists() else []
        assert not any(line.startswith("E ") for line in lines), f"{where}: {lines}"
        seen["conversions before the kill"] += sum(line[0] == "c" for line in lines)
        files = sorted(os.listdir(storage.location))
        seen[" + ".join(files)] += 1
        try:
            assert checkpoint_id(storage.load_checkpoint()) == current, where
            # Whatever the layout on disk, nothing torn comes back.
            _id_or_none(storage.load_previous())
        except TornCheckpoint as torn:
            pytest.fail(f"{where}: torn checkpoint after a kill: {torn}")

        state = storage.lock_state()
        assert state in (LockState.UNLOCKED, LockState.STALE), f"{where}: {state}"
        assert (state is LockState.STALE) == os.path.exists(storage.paths.next), where
        assert storage.break_stale_lock() is (state is LockState.STALE), where

        storage = storage.convert_layout(rng.choice(list(Layout)))
        assert os.listdir(storage.location) == [FILE_OF[storage.layout]], where
        assert checkpoint_id(storage.load_checkpoint()) == current, where
        data = random_checkpoint(rng, _CONVERTED_MAX)
        storage.save_checkpoint(data)
        current = checkpoint_id(data)
    return seen


def test_a_conversion_killed_at_random_moments_keeps_the_checkpoint_and_finishes(
    storage: SessionStorage, backend: str, backend_env: dict[str, str], tmp_path: Path
) -> None:
    seen = conversion_rounds(storage, backend, backend_env, CONVERSION_ROUNDS, tmp_path)
    # Kills must have left both files, or a half-written copy, at times: the
    # states only an interrupted conversion leaves.
    both = f"{CHECKPOINT_NAME} + {SLOTS_NAME}"
    copying = [files for files in seen if "session.next" in files]
    assert seen[both] > 0 or copying, seen
    assert seen["conversions before the kill"] > 0, seen
    print(f"{backend}: {CONVERSION_ROUNDS} kills while converting, {dict(seen)}")
