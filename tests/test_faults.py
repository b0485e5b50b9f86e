"""Real faults on real filesystems: a full disk, a read-only one, a vanished session.

Each fault must fail the save with an error naming the path, leave the last
good checkpoint loadable and no lock behind, and let saving go on once the
fault is gone. They run on a small tmpfs and on ext4, xfs and btrfs made on loop
devices (root only: each filesystem is skipped, with the reason, where it cannot
be mounted); the vanished session also runs where the tests' own files are.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import filesystems
from sessionstore import LockState, SessionStorage

OLD = b"the last good checkpoint " * 160
# Far more than a full filesystem has left, far less than any of them holds.
TOO_BIG = b"\x5a" * (4 * filesystems.MiB)
# What a filesystem left with about a quarter of a MiB still takes.
SMALL = b"a small checkpoint"
_LEAVE = 256 * 1024


@pytest.fixture(scope="module", params=filesystems.KINDS)
def mount(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[filesystems.Mount]:
    yield from filesystems.mount_or_skip(request.param, tmp_path_factory)


def assert_nothing_lost(storage: SessionStorage) -> None:
    assert storage.load_checkpoint() == OLD
    assert storage.lock_state() is LockState.UNLOCKED
    assert [p.name for p in Path(storage.location).iterdir()] == ["session"]


@pytest.mark.root
def test_a_full_filesystem_fails_the_save_and_loses_nothing(
    backend: str, mount: filesystems.Mount
) -> None:
    storage = SessionStorage.create(mount.root / f"full-{backend}")
    storage.save_checkpoint(OLD)
    filler = filesystems.fill(mount, leave=_LEAVE)
    try:
        with pytest.raises(OSError) as full:
            storage.save_checkpoint(TOO_BIG)
        assert full.value.errno == errno.ENOSPC, full.value
        assert full.value.filename == storage.paths.next
        assert_nothing_lost(storage)
        storage.save_checkpoint(SMALL)
        assert storage.load_checkpoint() == SMALL
    finally:
        filler.unlink()


@pytest.mark.root
def test_a_read_only_filesystem_fails_the_save_and_loses_nothing(
    backend: str, mount: filesystems.Mount
) -> None:
    storage = SessionStorage.create(mount.root / f"ro-{backend}")
    storage.save_checkpoint(OLD)
    filesystems.remount(mount, read_only=True)
    try:
        with pytest.raises(OSError) as read_only:
            storage.save_checkpoint(SMALL)
        assert read_only.value.errno == errno.EROFS, read_only.value
        assert read_only.value.filename == storage.paths.next
        assert_nothing_lost(storage)
        assert storage.break_stale_lock() is False
    finally:
        filesystems.remount(mount, read_only=False)
    storage.save_checkpoint(SMALL)
    assert storage.load_checkpoint() == SMALL


@pytest.mark.root
def test_a_stale_lock_on_a_read_only_filesystem_is_seen_but_not_broken(
    backend: str, mount: filesystems.Mount
) -> None:
    storage = SessionStorage.create(mount.root / f"ro-stale-{backend}")
    storage.save_checkpoint(OLD)
    Path(storage.paths.next).write_bytes(b"left by a dead writer")
    filesystems.remount(mount, read_only=True)
    try:
        assert storage.lock_state() is LockState.STALE
        with pytest.raises(OSError) as read_only:
            storage.break_stale_lock()
        assert read_only.value.errno == errno.EROFS
        assert read_only.value.filename == storage.paths.next
        assert storage.load_checkpoint() == OLD
    finally:
        filesystems.remount(mount, read_only=False)
    assert storage.break_stale_lock() is True
    storage.save_checkpoint(SMALL)
    assert storage.load_checkpoint() == SMALL


@pytest.fixture(scope="module", params=[filesystems.DEFAULT, *filesystems.KINDS])
def any_mount(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[filesystems.Mount]:
    yield from filesystems.mount_or_skip(request.param, tmp_path_factory)


@pytest.mark.parametrize(
    "call", ["save_checkpoint", "load_checkpoint", "lock_state", "break_stale_lock"]
)
def test_a_session_removed_under_a_live_storage_is_file_not_found_naming_it(
    backend: str, any_mount: filesystems.Mount, call: str
) -> None:
    storage = SessionStorage.create(any_mount.root / f"gone-{backend}")
    storage.save_checkpoint(OLD)
    shutil.rmtree(storage.location)
    args = (SMALL,) if call == "save_checkpoint" else ()
    with pytest.raises(FileNotFoundError) as missing:
        getattr(storage, call)(*args)
    assert missing.value.filename == storage.location
