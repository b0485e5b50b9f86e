"""CheckpointWriter on a slotted storage: the native worker runs the slotted plan.

Both workers save through the storage's layout; on the native backend the
worker is a Rust thread running ``slotted::save_slotted`` (``test_checkpoint_writer``
checks it is no Python thread and needs no GIL, on both layouts), and its
errors are the ones a direct save raises.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Final

import pytest

from sessionstore import (
    CorruptCheckpointError,
    Layout,
    LockedStorageError,
    SessionStorage,
)

PATIENCE: Final = 30.0


@pytest.fixture
def slotted(backend: str, tmp_path: Path) -> SessionStorage:
    return SessionStorage.create(tmp_path / "repo", layout=Layout.SLOTTED)


def test_the_last_of_many_submissions_is_saved_in_place(
    slotted: SessionStorage,
) -> None:
    with slotted.writer() as writer:
        writer.submit(b"first")
        writer.flush()
        inode = os.stat(slotted.paths.slots).st_ino
        for number in range(1000):
            writer.submit(f"checkpoint {number}".encode())
        writer.flush()
        assert 2 <= writer.saves <= 1001
    assert slotted.load_checkpoint() == b"checkpoint 999"
    previous = slotted.load_previous()
    assert previous is not None
    assert previous == b"first" or previous.startswith(b"checkpoint ")
    assert os.stat(slotted.paths.slots).st_ino == inode
    assert os.listdir(slotted.location) == ["session.slots"]


def test_a_record_that_outgrows_its_slot_is_rebuilt_by_the_worker(
    slotted: SessionStorage,
) -> None:
    big = os.urandom(100_000)
    with slotted.writer() as writer:
        writer.submit(b"small")
        writer.flush()
        writer.submit(big)
    assert slotted.load_checkpoint() == big
    assert slotted.load_previous() == b"small"


def test_a_leftover_next_file_is_raised_once_as_a_direct_save_raises_it(
    slotted: SessionStorage,
) -> None:
    slotted.save_checkpoint(b"kept")
    Path(slotted.paths.next).write_bytes(b"")
    with pytest.raises(LockedStorageError) as direct:
        slotted.save_checkpoint(b"direct")
    writer = slotted.writer()
    writer.submit(b"lost")
    with pytest.raises(LockedStorageError) as background:
        writer.flush()
    writer.flush()
    writer.close()
    assert (
        background.value.errno,
        background.value.filename,
        background.value.stale,
    ) == (
        errno.EEXIST,
        slotted.paths.next,
        True,
    )
    assert type(background.value) is type(direct.value)
    assert str(background.value) == str(direct.value)
    assert slotted.load_checkpoint() == b"kept"


def test_a_session_in_the_replace_layout_is_refused_by_the_worker(
    backend: str, tmp_path: Path
) -> None:
    replace = SessionStorage.create(tmp_path)
    replace.save_checkpoint(b"replace layout")
    slotted = SessionStorage(replace.location, layout=Layout.SLOTTED)
    with pytest.raises(FileExistsError) as info, slotted.writer() as writer:
        writer.submit(b"refused")
    assert info.value.filename == replace.session_file
    assert replace.load_checkpoint() == b"replace layout"


def test_a_damaged_slots_file_is_reported_by_the_worker(
    slotted: SessionStorage,
) -> None:
    Path(slotted.paths.slots).write_bytes(b"\0" * 12_288)
    writer = slotted.writer()
    writer.submit(b"refused")
    with pytest.raises(CorruptCheckpointError) as info:
        writer.close()
    assert info.value.filename == slotted.paths.slots
