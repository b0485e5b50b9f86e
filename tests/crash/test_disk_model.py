"""The disk model's own rules: a torn write, and a state written and read back."""

from __future__ import annotations

from pathlib import Path

from disk_model import SECTOR, Disk, Write
from explorer import CrashState
from hypothesis import given
from hypothesis import strategies as st

from sessionstore._naming import CHECKPOINT_NAME, NEXT_NAME

NEW = b"new checkpoint " * 95


def test_a_materialized_state_reads_back_as_the_same_disk(tmp_path: Path) -> None:
    disk = Disk(
        entries={CHECKPOINT_NAME: 1, NEXT_NAME: 1, "other": 2},
        inodes={1: NEW, 2: b"", 3: b"an orphan: no name, not on disk"},
    )
    state = CrashState.of(disk, returned=False, cut="test", landed=[])
    state.materialize(tmp_path / "s.session")
    again = CrashState.of(
        Disk.read(tmp_path / "s.session"), returned=False, cut="test", landed=[]
    )
    assert again == state
    assert state.links == ((CHECKPOINT_NAME, NEXT_NAME),)


@given(
    old=st.binary(max_size=3 * SECTOR),
    offset=st.integers(0, 2 * SECTOR),
    data=st.binary(min_size=1, max_size=3 * SECTOR),
)
def test_a_torn_write_holds_every_sector_whole_from_before_or_after(
    old: bytes, offset: int, data: bytes
) -> None:
    """Rule 5 of the model: each sector lands whole or not, sizes old or new."""
    write = Write(1, offset, data)
    disk = Disk(entries={}, inodes={1: old})
    full = write.apply(disk).inodes[1]
    before = old.ljust(len(full), b"\0")
    landings = [landed.inodes[1] for _, landed in write.landings(disk)]
    assert full in landings
    assert old in landings
    for content in landings:
        assert len(content) in (len(old), len(full))
        for start in range(0, len(content), SECTOR):
            piece = content[start : start + SECTOR]
            assert piece in (
                before[start : start + len(piece)],
                full[start : start + len(piece)],
            )
