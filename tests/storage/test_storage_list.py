"""get_storage_list(): which directories are sessions, and in which order."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from sessionstore import SessionStorage, SessionStorageRepository


def make(repo: Path, name: str, mtime_ns: int) -> SessionStorage:
    path = repo / name
    path.mkdir(parents=True)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return SessionStorage(path)


def test_youngest_first_by_directory_mtime(tmp_path: Path) -> None:
    old = make(tmp_path, "old.session", 1_000_000_000)
    young = make(tmp_path, "young.session", 3_000_000_000)
    middle = make(tmp_path, "middle.session", 2_000_000_000)
    repo = SessionStorageRepository(tmp_path)
    assert repo.get_storage_list() == [young, middle, old]
    assert list(repo) == [young, middle, old]


def test_ties_are_broken_by_name(tmp_path: Path) -> None:
    names = ["c.session", "a.session", "b.session"]
    for name in names:
        make(tmp_path, name, 5_000_000_000)
    listed = SessionStorageRepository(tmp_path).get_storage_list()
    assert [os.path.basename(s.location) for s in listed] == sorted(names)


def test_only_real_visible_session_directories_are_listed(tmp_path: Path) -> None:
    session = make(tmp_path, "real.session", 1)
    make(tmp_path, ".hidden.session", 2)
    make(tmp_path, "not-a-session", 3)
    (tmp_path / "file.session").write_bytes(b"")
    target = make(tmp_path / "elsewhere", "target.session", 4)
    (tmp_path / "link.session").symlink_to(target.location)
    (tmp_path / "dangling.session").symlink_to(tmp_path / "nowhere")
    assert SessionStorageRepository(tmp_path).get_storage_list() == [session]


def test_a_missing_repository_lists_empty(tmp_path: Path) -> None:
    assert SessionStorageRepository(tmp_path / "missing").get_storage_list() == []


def test_a_repository_that_is_a_file_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        SessionStorageRepository(tmp_path / "file").get_storage_list()


def test_an_entry_removed_while_listing_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = make(tmp_path, "keep.session", 2)
    gone = make(tmp_path, "gone.session", 1)
    real_scandir = os.scandir

    def scandir_then_remove(path: str) -> object:
        entries = real_scandir(path)
        os.rmdir(gone.location)
        return entries

    monkeypatch.setattr(os, "scandir", scandir_then_remove)
    assert SessionStorageRepository(tmp_path).get_storage_list() == [keep]


def test_the_repository_is_a_frozen_value(tmp_path: Path) -> None:
    assert SessionStorageRepository(tmp_path) == SessionStorageRepository(str(tmp_path))
    assert SessionStorageRepository(tmp_path).location == str(tmp_path)


def _create_many(base: str, count: int) -> list[str]:
    return [SessionStorage.create(base).location for _ in range(count)]


def test_concurrent_create_from_four_processes_gives_distinct_sessions(
    tmp_path: Path,
) -> None:
    base = str(tmp_path / "repo")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        batches = pool.starmap(_create_many, [(base, 50)] * 4)
    locations = [loc for batch in batches for loc in batch]
    assert len(locations) == 200
    assert len(set(locations)) == 200
    listed = SessionStorageRepository(base).get_storage_list()
    assert sorted(s.location for s in listed) == sorted(locations)


def test_an_empty_repository_location_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        SessionStorageRepository("")
