"""Real faults on real filesystems: a full disk, a read-only one, a vanished session.

Each fault must fail the save (or the layout conversion) with an error naming
the path, leave the last good checkpoint loadable, in its layout, and no lock
behind, and let saving go on once the fault is gone. Both layouts; a slotted
save that fits its slot needs no new space, so it works on a full filesystem
too, but for a copy-on-write one (btrfs), where it fails like any other. They
run on a small tmpfs and on ext4, xfs and btrfs made on loop devices (root
only: each filesystem is skipped, with the reason, where it cannot be mounted);
the vanished session also runs where the tests' own files are.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import filesystems
from sessionstore import Layout, LockState, SessionStorage
from sessionstore._naming import CHECKPOINT_NAME, SLOTS_NAME

OLD = b"the last good checkpoint " * 160
# Far more than a full filesystem has left, far less than any of them holds.
TOO_BIG = b"\x5a" * (4 * filesystems.MiB)
# What a filesystem left with about a quarter of a MiB still takes.
SMALL = b"a small checkpoint"
# Fits the filesystems, but not a second time once one is full: a conversion
# (which copies it) cannot finish.
COPIED = bytes(range(256)) * 2400
_LEAVE = 256 * 1024
FILE_OF = {Layout.REPLACE: CHECKPOINT_NAME, Layout.SLOTTED: SLOTS_NAME}
OTHER = {Layout.REPLACE: Layout.SLOTTED, Layout.SLOTTED: Layout.REPLACE}


@pytest.fixture(scope="module", params=filesystems.KINDS)
def mount(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[filesystems.Mount]:
    yield from filesystems.mount_or_skip(request.param, tmp_path_factory)


@pytest.fixture(params=list(Layout))
def layout(request: pytest.FixtureRequest) -> Layout:
    value: Layout = request.param
    return value


def saved_session(
    root: Path, name: str, layout: Layout = Layout.REPLACE, data: bytes = OLD
) -> SessionStorage:
    """A session of ``layout`` in the repository ``root/name``, holding ``data``."""
    storage = SessionStorage.create(root / name, layout=layout)
    storage.save_checkpoint(data)
    return storage


def raises_naming(
    code: int, path: str, call: Callable[..., object], *args: object
) -> None:
    """``call(*args)`` raises the OSError of ``code``, naming ``path``."""
    with pytest.raises(OSError) as raised:
        call(*args)
    assert raised.value.errno == code, raised.value
    assert raised.value.filename == path


def assert_nothing_lost(storage: SessionStorage, old: bytes = OLD) -> None:
    assert storage.load_checkpoint() == old
    assert storage.lock_state() is LockState.UNLOCKED
    names = [p.name for p in Path(storage.location).iterdir()]
    assert names == [FILE_OF[storage.layout]]


@pytest.mark.root
def test_a_full_filesystem_fails_the_save_and_loses_nothing(
    backend: str, mount: filesystems.Mount, layout: Layout
) -> None:
    storage = saved_session(mount.root, f"full-{backend}-{layout.value}", layout)
    with filesystems.filled(mount, leave=_LEAVE):
        raises_naming(
            errno.ENOSPC, storage.paths.next, storage.save_checkpoint, TOO_BIG
        )
        assert_nothing_lost(storage)
        storage.save_checkpoint(SMALL)
        assert storage.load_checkpoint() == SMALL


@pytest.mark.root
def test_a_slotted_save_that_fits_its_slot_works_on_a_full_filesystem(
    backend: str, mount: filesystems.Mount
) -> None:
    storage = saved_session(mount.root, f"full-in-place-{backend}", Layout.SLOTTED)
    with filesystems.filled(mount, leave=0):
        if mount.kind in filesystems.COPY_ON_WRITE:
            # Every overwrite takes new blocks there: a full disk refuses it.
            raises_naming(
                errno.ENOSPC, storage.paths.slots, storage.save_checkpoint, SMALL
            )
            assert_nothing_lost(storage)
            return
        for n in range(3):
            storage.save_checkpoint(SMALL * n)
            assert storage.load_checkpoint() == SMALL * n
    assert storage.load_previous() == SMALL


@pytest.mark.root
def test_a_conversion_on_a_full_filesystem_fails_and_loses_nothing(
    backend: str, mount: filesystems.Mount, layout: Layout
) -> None:
    storage = saved_session(
        mount.root, f"convert-full-{backend}-{layout.value}", layout, data=COPIED
    )
    with filesystems.filled(mount, leave=_LEAVE):
        raises_naming(
            errno.ENOSPC, storage.paths.next, storage.convert_layout, OTHER[layout]
        )
        assert_nothing_lost(storage, COPIED)
    converted = storage.convert_layout(OTHER[layout])
    assert_nothing_lost(converted, COPIED)


@pytest.mark.root
def test_a_read_only_filesystem_fails_the_save_and_loses_nothing(
    backend: str, mount: filesystems.Mount, layout: Layout
) -> None:
    storage = saved_session(mount.root, f"ro-{backend}-{layout.value}", layout)
    with filesystems.read_only(mount):
        # An in-place save opens the slots file for writing: that is refused.
        opened = {
            Layout.REPLACE: storage.paths.next,
            Layout.SLOTTED: storage.paths.slots,
        }
        raises_naming(errno.EROFS, opened[layout], storage.save_checkpoint, SMALL)
        assert_nothing_lost(storage)
        raises_naming(
            errno.EROFS, storage.paths.next, storage.convert_layout, OTHER[layout]
        )
        assert_nothing_lost(storage)
        assert storage.break_stale_lock() is False
    storage.save_checkpoint(SMALL)
    assert storage.load_checkpoint() == SMALL


@pytest.mark.root
def test_a_stale_lock_on_a_read_only_filesystem_is_seen_but_not_broken(
    backend: str, mount: filesystems.Mount, layout: Layout
) -> None:
    storage = saved_session(mount.root, f"ro-stale-{backend}-{layout.value}", layout)
    Path(storage.paths.next).write_bytes(b"left by a dead writer")
    with filesystems.read_only(mount):
        assert storage.lock_state() is LockState.STALE
        raises_naming(errno.EROFS, storage.paths.next, storage.break_stale_lock)
        assert storage.load_checkpoint() == OLD
    assert storage.break_stale_lock() is True
    storage.save_checkpoint(SMALL)
    assert storage.load_checkpoint() == SMALL


@pytest.fixture(scope="module", params=[filesystems.DEFAULT, *filesystems.KINDS])
def any_mount(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[filesystems.Mount]:
    yield from filesystems.mount_or_skip(request.param, tmp_path_factory)


@pytest.mark.parametrize(
    "call",
    [
        "save_checkpoint",
        "load_checkpoint",
        "load_previous",
        "lock_state",
        "break_stale_lock",
        "convert_layout",
    ],
)
def test_a_session_removed_under_a_live_storage_is_file_not_found_naming_it(
    backend: str, any_mount: filesystems.Mount, call: str, layout: Layout
) -> None:
    storage = saved_session(
        any_mount.root, f"gone-{backend}-{call}-{layout.value}", layout
    )
    shutil.rmtree(storage.location)
    arguments: dict[str, tuple[object, ...]] = {
        "save_checkpoint": (SMALL,),
        "convert_layout": (OTHER[layout],),
    }
    with pytest.raises(FileNotFoundError) as missing:
        getattr(storage, call)(*arguments.get(call, ()))
    assert missing.value.filename == storage.location


@pytest.mark.root
def test_a_held_session_on_a_full_filesystem_fails_the_save_and_saves_on(
    backend: str, mount: filesystems.Mount, layout: Layout
) -> None:
    storage = saved_session(mount.root, f"held-full-{backend}-{layout.value}", layout)
    with storage.hold() as held:
        with filesystems.filled(mount, leave=_LEAVE):
            # Too big for the slot too: the slotted layout rebuilds.
            raises_naming(
                errno.ENOSPC, storage.paths.next, held.save_checkpoint, TOO_BIG
            )
            assert storage.load_checkpoint() == OLD
            assert storage.lock_state() is LockState.HELD
            names = [p.name for p in Path(storage.location).iterdir()]
            assert names == [FILE_OF[layout]]
        held.save_checkpoint(SMALL)
        assert storage.load_checkpoint() == SMALL
    assert_nothing_lost(storage, SMALL)


@pytest.mark.root
def test_a_held_replace_session_on_a_read_only_filesystem_fails_and_saves_on(
    backend: str, mount: filesystems.Mount
) -> None:
    storage = saved_session(mount.root, f"held-ro-{backend}")
    with storage.hold() as held:
        # The held directory is open for reading only: the remount goes through.
        with filesystems.read_only(mount):
            raises_naming(errno.EROFS, storage.paths.next, held.save_checkpoint, SMALL)
            assert storage.load_checkpoint() == OLD
            assert storage.lock_state() is LockState.HELD
        held.save_checkpoint(SMALL)
    assert_nothing_lost(storage, SMALL)


@pytest.mark.root
def test_a_held_slotted_session_keeps_its_filesystem_from_going_read_only(
    backend: str, mount: filesystems.Mount
) -> None:
    """Its slots file stays open for writing, as the kernel then sees it, until
    the session is released: a read-only remount is refused as busy meanwhile,
    and the saves go on."""
    storage = saved_session(mount.root, f"held-busy-{backend}", Layout.SLOTTED)
    with storage.hold() as held:
        held.save_checkpoint(SMALL)
        with pytest.raises(filesystems.CommandFailed, match="busy"):
            filesystems.remount(mount, read_only=True)
        held.save_checkpoint(OLD)
    with filesystems.read_only(mount):
        assert storage.load_checkpoint() == OLD
        assert storage.load_previous() == SMALL
