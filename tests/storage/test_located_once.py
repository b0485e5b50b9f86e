"""A session is located once, as an absolute path, when its storage is made.

A relative location and a later ``chdir()`` must not move a save, a load, a
background writer or a held session to another directory; ``location`` stays
as it was given.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sessionstore import Layout, SessionStorage


def _two_places(tmp_path: Path) -> tuple[Path, Path]:
    """Directories ``first`` and ``second``, each with an empty ``s.session``."""
    first, second = tmp_path / "first", tmp_path / "second"
    for place in (first, second):
        (place / "s.session").mkdir(parents=True)
    return first, second


@pytest.mark.parametrize("layout", list(Layout))
def test_saves_and_loads_stay_where_the_storage_was_made(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: Layout
) -> None:
    first, second = _two_places(tmp_path)
    monkeypatch.chdir(first)
    storage = SessionStorage("s.session", layout=layout)
    monkeypatch.chdir(second)
    storage.save_checkpoint(b"saved")
    assert storage.location == "s.session"
    assert storage.absolute_location == str(first / "s.session")
    assert storage.load_checkpoint() == b"saved"
    assert os.listdir(second / "s.session") == []
    assert SessionStorage(first / "s.session").load_checkpoint() == b"saved"
    converted = storage.convert_layout(
        Layout.REPLACE if layout is Layout.SLOTTED else Layout.SLOTTED
    )
    assert converted.absolute_location == storage.absolute_location
    assert converted.load_checkpoint() == b"saved"
    assert os.listdir(second / "s.session") == []


@pytest.mark.parametrize("layout", list(Layout))
def test_a_background_writer_saves_where_its_storage_was_made(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: Layout
) -> None:
    first, second = _two_places(tmp_path)
    monkeypatch.chdir(first)
    storage = SessionStorage("s.session", layout=layout)
    with storage.writer() as writer:
        monkeypatch.chdir(second)
        writer.submit(b"in the background")
    assert os.listdir(second / "s.session") == []
    assert SessionStorage(first / "s.session").load_checkpoint() == b"in the background"


@pytest.mark.parametrize("layout", list(Layout))
def test_a_held_session_saves_and_loads_where_its_storage_was_made(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: Layout
) -> None:
    first, second = _two_places(tmp_path)
    monkeypatch.chdir(first)
    storage = SessionStorage("s.session", layout=layout)
    with storage.hold() as held:
        held.save_checkpoint(b"one")
        monkeypatch.chdir(second)
        held.save_checkpoint(b"two")
        assert held.load_checkpoint() == b"two"
    assert os.listdir(second / "s.session") == []
    assert SessionStorage(first / "s.session").load_checkpoint() == b"two"


def test_equal_storages_stay_equal_wherever_they_were_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The absolute path is where the storage works, not part of its value."""
    first, second = _two_places(tmp_path)
    monkeypatch.chdir(first)
    here = SessionStorage("s.session")
    monkeypatch.chdir(second)
    there = SessionStorage("s.session")
    assert here == there
    assert hash(here) == hash(there)
    assert here.absolute_location != there.absolute_location
