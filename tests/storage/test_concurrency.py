"""Several processes saving into one session while another reads it.

Four writers make 200 saves each, all at once, in either layout, while this
process loads (and probes the lock) in a loop: each save either succeeds or
finds the lock held by a live writer; each load is a complete checkpoint; the
probe never calls a live writer dead; the checkpoint left at the end is one a
writer saved. A reader racing one process saving through a held session
sees only whole checkpoints too. A reader racing a process that converts the
session between the layouts, back and forth, always loads the one checkpoint
there is.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Final

import pytest

from checkpoint_child import TornCheckpoint, checkpoint_id
from sessionstore import Layout, LockState, SessionStorage

CHILD: Final = str(Path(__file__).parents[1] / "checkpoint_child.py")
WRITERS: Final = 4
SAVES: Final = 200
MAX_SIZE: Final = 64 * 1024


@pytest.mark.parametrize("layout", list(Layout))
def test_concurrent_writers_and_a_reader_see_only_whole_checkpoints(
    backend: str, backend_env: dict[str, str], layout: Layout, tmp_path: Path
) -> None:
    storage = SessionStorage.create(tmp_path / "repo", layout=layout)
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                CHILD,
                "saves",
                storage.location,
                str(SAVES),
                str(n),
                str(MAX_SIZE),
                layout.value,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=backend_env,
        )
        for n in range(WRITERS)
    ]
    for writer in writers:
        assert writer.stdout is not None
        assert writer.stdout.readline() == f"ready {backend}\n"
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()

    loaded: Counter[str | None] = Counter()
    states: Counter[LockState] = Counter()
    while any(writer.poll() is None for writer in writers):
        try:
            loaded[checkpoint_id(storage.load_checkpoint())] += 1
        except TornCheckpoint as torn:
            raise AssertionError(f"a load saw a torn checkpoint: {torn}") from None
        states[storage.lock_state()] += 1

    saved: set[str] = set()
    outcomes: Counter[str] = Counter()
    for writer in writers:
        out, _ = writer.communicate()
        assert writer.returncode == 0, f"a writer failed: exit {writer.returncode}"
        lines = out.splitlines()
        assert len(lines) == SAVES
        for line in lines:
            kind, *rest = line.split()
            outcomes[kind] += 1
            if kind == "ok":
                saved.add(rest[0])
            else:
                assert rest == [str(errno.EWOULDBLOCK), "False"], line
    assert outcomes["ok"] + outcomes["locked"] == WRITERS * SAVES
    assert saved, "no save succeeded"
    final = checkpoint_id(storage.load_checkpoint())
    assert final in saved
    # Every checkpoint a load saw was one a writer saved (or none yet).
    assert set(loaded) - {None} <= saved
    assert states[LockState.STALE] == 0, states
    print(
        f"{backend}, {layout.value}: saves {dict(outcomes)}, "
        f"loads {loaded.total()}, locks {dict(states)}"
    )


@pytest.mark.parametrize("layout", list(Layout))
def test_a_reader_racing_a_held_session_sees_only_whole_checkpoints(
    backend: str, backend_env: dict[str, str], layout: Layout, tmp_path: Path
) -> None:
    """A held slotted session overwrites its slots in place without reading
    them: a load racing it still returns whole checkpoints only."""
    storage = SessionStorage.create(tmp_path / "repo", layout=layout)
    count = 2 * SAVES
    writer = subprocess.Popen(
        [sys.executable, CHILD, "saves", storage.location, str(count), "7",
         str(MAX_SIZE), layout.value, "held"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=backend_env,
    )  # fmt: skip
    assert writer.stdout is not None
    assert writer.stdin is not None
    assert writer.stdout.readline() == f"ready {backend}\n"
    writer.stdin.write("go\n")
    writer.stdin.flush()
    loaded: Counter[str | None] = Counter()
    states: Counter[LockState] = Counter()
    while writer.poll() is None:
        try:
            loaded[checkpoint_id(storage.load_checkpoint())] += 1
        except TornCheckpoint as torn:
            raise AssertionError(f"a load saw a torn checkpoint: {torn}") from None
        states[storage.lock_state()] += 1
    out, _ = writer.communicate()
    assert writer.returncode == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["ok"] * count
    saved = [line.split()[1] for line in lines]
    assert set(loaded) - {None} <= set(saved)
    assert checkpoint_id(storage.load_checkpoint()) == saved[-1]
    assert states[LockState.STALE] == 0, states
    assert states[LockState.HELD] > 0, states
    print(f"{backend}, {layout.value}, held: loads {loaded.total()}, {dict(states)}")


CONVERSIONS: Final = 1000


def test_a_reader_racing_conversions_always_loads_the_checkpoint(
    storage: SessionStorage, backend: str, backend_env: dict[str, str]
) -> None:
    data = b"the one checkpoint " * 100
    storage.save_checkpoint(data)
    converter = subprocess.Popen(
        [sys.executable, CHILD, "converts", storage.location, str(CONVERSIONS)],
        stdout=subprocess.PIPE,
        text=True,
        env=backend_env,
    )
    assert converter.stdout is not None
    assert converter.stdout.readline() == f"ready {backend}\n"
    loads: Counter[str] = Counter()
    while converter.poll() is None:
        loaded = storage.load_checkpoint()
        loads["whole" if loaded == data else f"{len(loaded)} bytes"] += 1
    out, _ = converter.communicate()
    assert converter.returncode == 0, out
    assert out == "done\n"
    assert storage.load_checkpoint() == data
    assert set(loads) == {"whole"}, loads
    print(f"{backend}: {loads.total()} loads racing {2 * CONVERSIONS} conversions")
