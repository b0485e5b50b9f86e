"""SessionStorage: the plainbox API, on both writer backends."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionstore import (
    Durability,
    LockedStorageError,
    LockState,
    SessionStorage,
    SessionStorageRepository,
)

MiB = 1024 * 1024


@pytest.mark.parametrize(
    "data",
    [b"", b"x", bytes(range(256)) * 4096, os.urandom(MiB)],
    ids=["empty", "one-byte", "binary-1MiB", "random-1MiB"],
)
@pytest.mark.parametrize("durability", list(Durability))
def test_round_trip(
    backend: str, tmp_path: Path, data: bytes, durability: Durability
) -> None:
    storage = SessionStorage.create(tmp_path, durability=durability)
    storage.save_checkpoint(data)
    assert storage.load_checkpoint() == data


def test_a_save_replaces_the_previous_checkpoint(storage: SessionStorage) -> None:
    storage.save_checkpoint(b"first, and longer")
    storage.save_checkpoint(b"second")
    assert storage.load_checkpoint() == b"second"


def test_bytearray_and_memoryview_are_accepted(storage: SessionStorage) -> None:
    storage.save_checkpoint(bytearray(b"from a bytearray"))
    assert storage.load_checkpoint() == b"from a bytearray"
    storage.save_checkpoint(memoryview(b"xxfrom a viewxx")[2:-2])
    assert storage.load_checkpoint() == b"from a view"


def test_a_memoryview_of_wide_items_is_saved_as_its_bytes(
    storage: SessionStorage,
) -> None:
    import array

    numbers = array.array("I", [1, 2, 3])
    storage.save_checkpoint(memoryview(numbers))
    assert storage.load_checkpoint() == numbers.tobytes()


@pytest.mark.parametrize("data", ["text", 42, None, [b"x"], memoryview(b"abcd")[::2]])
def test_non_bytes_data_raises_type_error_before_touching_the_disk(
    storage: SessionStorage, data: object
) -> None:
    storage.save_checkpoint(b"kept")
    before = sorted(os.listdir(storage.location))
    with pytest.raises(TypeError):
        storage.save_checkpoint(data)  # type: ignore[arg-type]
    assert sorted(os.listdir(storage.location)) == before
    assert storage.load_checkpoint() == b"kept"


def test_a_never_saved_session_loads_empty(storage: SessionStorage) -> None:
    assert storage.load_checkpoint() == b""


def test_a_missing_session_directory_raises_naming_it(
    backend: str, tmp_path: Path
) -> None:
    storage = SessionStorage(tmp_path / "gone.session")
    with pytest.raises(FileNotFoundError) as info:
        storage.load_checkpoint()
    assert info.value.filename == storage.location
    with pytest.raises(FileNotFoundError) as info:
        storage.save_checkpoint(b"x")
    assert info.value.filename == storage.location


def test_a_location_that_is_a_file_raises_not_a_directory(
    backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "file.session"
    path.write_bytes(b"not a directory")
    with pytest.raises(NotADirectoryError) as info:
        SessionStorage(path).save_checkpoint(b"x")
    assert info.value.filename == os.fspath(path)
    assert path.read_bytes() == b"not a directory"


def _save_as_nobody(storage: SessionStorage, data: bytes) -> tuple[str, int, str]:
    """Try a save in a forked child without root's powers; its error, as text."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        result = "saved", 0, ""
        try:
            os.setgid(65534)
            os.setuid(65534)
            storage.save_checkpoint(data)
        except OSError as exc:
            result = type(exc).__name__, exc.errno or 0, str(exc.filename)
        os.write(write, repr(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(pid, 0)
    kind, number, filename = report.strip("()").split(", ")
    return kind.strip("'"), int(number), filename.strip("'")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory every user can reach (pytest's own is root-only)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp())
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def test_an_unwritable_location_raises_permission_error_naming_the_next_file(
    backend: str, open_tmp: Path
) -> None:
    storage = SessionStorage.create(open_tmp / "repo")
    os.chmod(open_tmp / "repo", 0o755)
    storage.save_checkpoint(b"kept")
    if os.geteuid() == 0:
        # Root ignores permissions: the save runs in a child that is not root.
        os.chown(storage.location, 65534, 65534)
        os.chmod(storage.location, 0o500)
        kind, number, filename = _save_as_nobody(storage, b"new")
    else:
        os.chmod(storage.location, 0o500)
        with pytest.raises(PermissionError) as info:
            storage.save_checkpoint(b"new")
        error = info.value
        kind, number, filename = type(error).__name__, error.errno or 0, error.filename
    os.chmod(storage.location, 0o700)
    assert (kind, number, filename) == (
        "PermissionError",
        errno.EACCES,
        storage.paths.next,
    )
    assert storage.load_checkpoint() == b"kept"
    assert os.listdir(storage.location) == ["session"]


def test_a_leftover_next_file_locks_the_storage(storage: SessionStorage) -> None:
    storage.save_checkpoint(b"kept")
    Path(storage.paths.next).write_bytes(b"half a checkpoint")
    with pytest.raises(LockedStorageError) as info:
        storage.save_checkpoint(b"new")
    error = info.value
    assert isinstance(error, OSError)
    assert error.errno == errno.EEXIST
    assert error.filename == storage.paths.next
    assert error.stale is True
    assert storage.load_checkpoint() == b"kept"
    assert Path(storage.paths.next).read_bytes() == b"half a checkpoint"


def test_a_live_writer_holding_the_lock_makes_save_raise_ewouldblock(
    storage: SessionStorage,
) -> None:
    import fcntl

    storage.save_checkpoint(b"kept")
    fd = os.open(storage.location, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LockedStorageError) as info:
            storage.save_checkpoint(b"new")
    finally:
        os.close(fd)
    assert info.value.errno == errno.EWOULDBLOCK
    assert info.value.stale is False
    assert info.value.filename == storage.paths.next
    assert storage.load_checkpoint() == b"kept"
    assert not os.path.exists(storage.paths.next)


def test_locked_storage_error_survives_pickling(storage: SessionStorage) -> None:
    import pickle

    error = LockedStorageError(errno.EEXIST, storage.paths.next, stale=True)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.errno, copy.filename, copy.stale) == (
        errno.EEXIST,
        storage.paths.next,
        True,
    )


def test_break_lock_removes_the_next_file_and_saving_works_again(
    storage: SessionStorage,
) -> None:
    Path(storage.paths.next).write_bytes(b"")
    storage.break_lock()
    assert not os.path.exists(storage.paths.next)
    storage.save_checkpoint(b"after")
    assert storage.load_checkpoint() == b"after"


def test_break_lock_without_a_lock_raises_file_not_found(
    storage: SessionStorage,
) -> None:
    with pytest.raises(FileNotFoundError) as info:
        storage.break_lock()
    assert info.value.filename == storage.paths.next


def test_after_saves_the_directory_holds_exactly_the_checkpoint(
    storage: SessionStorage,
) -> None:
    assert os.listdir(storage.location) == []
    for n in range(3):
        storage.save_checkpoint(b"x" * n)
    assert os.listdir(storage.location) == ["session"]
    assert stat.S_IMODE(os.stat(storage.session_file).st_mode) == 0o600
    assert storage.lock_state() is LockState.UNLOCKED


def test_properties(tmp_path: Path) -> None:
    storage = SessionStorage(tmp_path / "pbox-abc.session")
    assert storage.location == os.fspath(tmp_path / "pbox-abc.session")
    assert storage.id == "pbox-abc"
    assert storage.session_file == os.path.join(storage.location, "session")
    assert storage.durability is Durability.FULL


def test_storage_is_a_frozen_value(tmp_path: Path) -> None:
    a = SessionStorage(tmp_path / "a.session")
    b = SessionStorage(os.fspath(tmp_path / "a.session"))
    assert a == b
    assert hash(a) == hash(b)
    assert a != SessionStorage(tmp_path / "a.session", durability=Durability.NONE)
    with pytest.raises(AttributeError):
        a.location = "elsewhere"  # type: ignore[misc]


@pytest.mark.parametrize("bad", [b"/bytes/path", 3, ""])
def test_a_bad_location_is_refused(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        SessionStorage(bad)  # type: ignore[arg-type]


def test_a_bad_durability_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Durability"):
        SessionStorage(tmp_path, durability="full")  # type: ignore[arg-type]


# create()


def test_create_makes_a_new_private_empty_directory_and_its_parents(
    backend: str, tmp_path: Path
) -> None:
    base = tmp_path / "a" / "b" / "repo"
    storage = SessionStorage.create(base)
    assert os.path.dirname(storage.location) == os.fspath(base)
    assert os.listdir(storage.location) == []
    assert stat.S_IMODE(os.stat(storage.location).st_mode) == 0o700
    assert storage.location.endswith(".session")
    assert os.path.basename(storage.location).startswith("pbox-")
    assert storage.id == os.path.basename(storage.location)[: -len(".session")]


def test_create_passes_durability_on(tmp_path: Path) -> None:
    storage = SessionStorage.create(tmp_path, durability=Durability.NONE)
    assert storage.durability is Durability.NONE


@pytest.mark.parametrize("prefix", ["../x", ".hidden", "a/b", "/abs", "..", "\0"])
def test_a_hostile_prefix_stays_inside_base_dir_and_is_listed(
    backend: str, tmp_path: Path, prefix: str
) -> None:
    storage = SessionStorage.create(tmp_path / "repo", prefix=prefix)
    assert os.path.dirname(storage.location) == os.fspath(tmp_path / "repo")
    assert os.listdir(tmp_path) == ["repo"]
    assert SessionStorageRepository(tmp_path / "repo").get_storage_list() == [storage]


def test_create_in_a_file_raises_not_a_directory(tmp_path: Path) -> None:
    base = tmp_path / "file"
    base.write_bytes(b"")
    with pytest.raises(NotADirectoryError) as info:
        SessionStorage.create(base)
    assert info.value.filename == os.fspath(base)


def test_create_under_a_file_raises_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        SessionStorage.create(tmp_path / "file" / "repo")


def test_create_twice_gives_two_sessions(tmp_path: Path) -> None:
    a = SessionStorage.create(tmp_path)
    b = SessionStorage.create(tmp_path)
    assert a != b


def test_create_retries_on_a_name_collision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import secrets

    tokens = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(secrets, "token_hex", lambda _n: next(tokens))
    first = SessionStorage.create(tmp_path, prefix="p-")
    second = SessionStorage.create(tmp_path, prefix="p-")
    assert first.location.endswith("-aaaa.session")
    assert second.location.endswith("-bbbb.session")


# remove()


def test_remove_removes_the_session_and_is_idempotent(storage: SessionStorage) -> None:
    storage.save_checkpoint(b"data")
    parent = os.path.dirname(storage.location)
    storage.remove()
    assert not os.path.exists(storage.location)
    assert os.listdir(parent) == []
    storage.remove()


def test_remove_refuses_a_symlinked_session(backend: str, tmp_path: Path) -> None:
    real = SessionStorage.create(tmp_path / "real")
    real.save_checkpoint(b"keep me")
    link = tmp_path / "repo" / "link.session"
    link.parent.mkdir()
    link.symlink_to(real.location)
    with pytest.raises(OSError, match="symlink") as info:
        SessionStorage(link).remove()
    assert info.value.errno == errno.ELOOP
    assert info.value.filename == os.fspath(link)
    assert real.load_checkpoint() == b"keep me"


def test_remove_never_follows_a_symlink_out_of_the_session(
    storage: SessionStorage, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"precious")
    os.symlink(outside, os.path.join(storage.location, "escape"))
    storage.remove()
    assert (outside / "precious").read_bytes() == b"precious"
    assert not os.path.exists(storage.location)


def test_remove_refuses_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f.session"
    path.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        SessionStorage(path).remove()
    assert path.exists()


def test_a_crash_mid_removal_leaves_nothing_half_listed(
    storage: SessionStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sessionstore._storage as storage_module

    storage.save_checkpoint(b"data")
    repo = SessionStorageRepository(os.path.dirname(storage.location))

    def crash(path: str) -> None:
        # The tree is half deleted when the process dies.
        os.unlink(os.path.join(path, "session"))
        raise KeyboardInterrupt

    monkeypatch.setattr(storage_module, "remove_tree", crash)
    with pytest.raises(KeyboardInterrupt):
        storage.remove()
    assert repo.get_storage_list() == []
    leftovers = os.listdir(repo.location)
    assert len(leftovers) == 1
    assert leftovers[0].startswith(".")


@pytest.mark.parametrize("name", ["session", "session.slots"])
def test_a_symlinked_checkpoint_file_is_refused_naming_it(
    storage: SessionStorage, tmp_path: Path, name: str
) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not ours")
    link = Path(storage.location) / name
    link.symlink_to(target)
    with pytest.raises(OSError) as info:
        storage.load_checkpoint()
    assert info.value.errno == errno.ELOOP
    assert info.value.filename == os.fspath(link)


def test_a_dangling_checkpoint_symlink_is_refused_not_waited_on(
    storage: SessionStorage,
) -> None:
    os.symlink("/nonexistent-target", storage.session_file)
    with pytest.raises(OSError) as info:
        storage.load_checkpoint()
    assert info.value.errno == errno.ELOOP


def test_a_symlinked_session_is_refused_by_every_call(
    backend: str, tmp_path: Path
) -> None:
    real = SessionStorage.create(tmp_path / "real")
    real.save_checkpoint(b"kept")
    link = tmp_path / "link.session"
    link.symlink_to(real.location)
    linked = SessionStorage(link)
    for call in (
        lambda: linked.save_checkpoint(b"through the link"),
        linked.lock_state,
        linked.break_stale_lock,
    ):
        # Links are not followed, so the location is not a directory.
        with pytest.raises(NotADirectoryError) as info:
            call()
        assert info.value.filename == os.fspath(link)
    assert real.load_checkpoint() == b"kept"


def test_a_session_with_the_longest_prefix_can_be_removed(tmp_path: Path) -> None:
    storage = SessionStorage.create(tmp_path, prefix="p" * 300)
    storage.save_checkpoint(b"x")
    storage.remove()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "options",
    [{"durability": "full"}, {"layout": "slotted"}],
    ids=["durability", "layout"],
)
def test_create_refuses_bad_options_before_making_anything(
    tmp_path: Path, options: dict[str, str]
) -> None:
    with pytest.raises(TypeError):
        SessionStorage.create(tmp_path / "repo", **options)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []
