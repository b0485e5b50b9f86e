"""The held plans on both backends: the same syscalls as the plans, the same bytes.

The held plan's syscalls are traced (as in ``test_slotted_conformance``): a held
slotted save that knows its slots is an ``fstat`` of the directory (the
session was not removed), ``pwritev2`` and ``fdatasync``, and nothing else; the
first one opens and reads the slots; a held replace save is the replace
sequence inside the directory held open. Both backends leave the same bytes.
A held session's behaviour is tested in ``tests/storage/test_held_session.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest
from backend_parity import both_backends
from syscall_traces import (
    SLOTS_FILE,
    TRACED_WITH_READS,
    before_slots,
    expected_lines,
    marked_save_script,
    run_traced,
    slot_reads,
)

from sessionstore import Durability, Layout, SessionStorage, _backend
from sessionstore._save_plan import SaveStep, plan_hold
from sessionstore._slots_format import (
    FILE_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    plan_slot_size,
)

_CHILD: Final = marked_save_script(
    """
from sessionstore import Durability, Layout, SessionStorage, _backend

location, durability, layout, held_saves, size = sys.argv[1:]
storage = SessionStorage(
    location, durability=Durability[durability], layout=Layout[layout]
)
size = int(size)
# One-shot saves set the stage (and warm every import), then the session is
# held and saved into `held_saves` times before the traced save.
storage.save_checkpoint(b"a" * size)
storage.save_checkpoint(b"b" * size)
held = storage.hold()
for _ in range(int(held_saves)):
    held.save_checkpoint(b"c" * size)
data = b"d" * size
storage = held
"""
)


def traced_held_save(
    strace: str,
    env: dict[str, str],
    tmp_path: Path,
    storage: SessionStorage,
    held_saves: int,
    size: int,
) -> tuple[list[str], str]:
    args = [storage.location, storage.durability.name, storage.layout.name]
    args += [str(held_saves), str(size)]
    return run_traced(
        strace,
        env,
        tmp_path / "trace.txt",
        TRACED_WITH_READS,
        _CHILD,
        args,
        storage.location,
    )


@pytest.mark.parametrize("durability", list(Durability))
def test_a_held_slotted_save_that_knows_its_slots_is_a_write_and_a_flush(
    strace: str,
    backend: str,
    backend_env: dict[str, str],
    tmp_path: Path,
    durability: Durability,
) -> None:
    storage = SessionStorage.create(
        tmp_path / "repo", durability=durability, layout=Layout.SLOTTED
    )
    size = 4096
    lines, outcome = traced_held_save(strace, backend_env, tmp_path, storage, 1, size)

    assert outcome == f"{backend} saved"
    plan = plan_hold(durability, Layout.SLOTTED)
    # One-shot saves filled slot 0 then slot 1, the held save slot 0: this one
    # goes to slot 1, without opening or reading anything.
    at = FILE_HEADER_SIZE + plan_slot_size(size)
    record = RECORD_HEADER_SIZE + size
    by_step = {
        SaveStep.CHECK_DIR_LINKED: ["fstat(dir)"],
        SaveStep.WRITE_SLOT: [
            f"pwritev2({SLOTS_FILE}, 2 parts, {record} bytes at {at})"
        ],
        SaveStep.SYNC_SLOT: [f"fdatasync({SLOTS_FILE})"],
    }
    assert lines == [line for step in plan.save.steps for line in by_step.get(step, [])]
    assert len(lines) == (3 if durability is Durability.FULL else 2)


def test_the_first_held_save_opens_and_reads_the_slots(
    strace: str, backend: str, backend_env: dict[str, str], tmp_path: Path
) -> None:
    storage = SessionStorage.create(tmp_path / "repo", layout=Layout.SLOTTED)
    size = 3000
    lines, outcome = traced_held_save(strace, backend_env, tmp_path, storage, 0, size)

    assert outcome == f"{backend} saved"
    record = RECORD_HEADER_SIZE + size
    assert lines == [
        *before_slots()[SaveStep.OPEN_SLOTS],
        "fstat(dir)",
        *slot_reads(plan_slot_size(size), 1, size),
        f"pwritev2({SLOTS_FILE}, 2 parts, {record} bytes at {FILE_HEADER_SIZE})",
        f"fdatasync({SLOTS_FILE})",
    ]


@pytest.mark.parametrize("durability", list(Durability))
def test_a_held_replace_save_is_the_replace_sequence_inside_the_held_directory(
    strace: str,
    backend: str,
    backend_env: dict[str, str],
    tmp_path: Path,
    durability: Durability,
) -> None:
    storage = SessionStorage.create(tmp_path / "repo", durability=durability)
    size = 5000
    lines, outcome = traced_held_save(strace, backend_env, tmp_path, storage, 1, size)

    assert outcome == f"{backend} saved"
    plan = plan_hold(durability, Layout.REPLACE)
    assert lines == expected_lines(plan.save, size)
    assert not {"openat(cwd", "flock(", "close(dir)"} & {line[:10] for line in lines}


def test_both_backends_write_the_same_bytes(
    native: _backend.Backend, tmp_path: Path
) -> None:
    images = {}
    for name, chosen in both_backends(native).items():
        previous = _backend.active.current
        _backend.active.current = chosen
        try:
            storage = SessionStorage.create(tmp_path / name, layout=Layout.SLOTTED)
            with storage.hold() as held:
                for data in [b"a", b"bb" * 3000, b"c", b"d" * 100_000, b"e"]:
                    held.save_checkpoint(data)
            images[name] = Path(storage.paths.slots).read_bytes()
        finally:
            _backend.active.current = previous
    assert images["python"] == images["native"]
