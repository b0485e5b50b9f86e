"""The slotted layout: in-place saves, two generations, layout detection, conversion."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import attrs
import pytest

import forked
from session_age import date_session
from sessionstore import (
    CorruptCheckpointError,
    Durability,
    Layout,
    LockedStorageError,
    LockState,
    SessionStorage,
    _backend,
)
from sessionstore._slots_format import (
    RECORD_HEADER_SIZE,
    decode_file_header,
    decode_record_header,
)

T = TypeVar("T")


@pytest.fixture(params=list(Durability))
def slotted(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> SessionStorage:
    """A new, empty session in the slotted layout."""
    return SessionStorage.create(
        tmp_path, layout=Layout.SLOTTED, durability=request.param
    )


def records(storage: SessionStorage) -> list[tuple[int, int, bytes]]:
    """(slot, sequence, data) of every record on disk, checked or not."""
    image = Path(storage.paths.slots).read_bytes()
    header = decode_file_header(image)
    found = []
    for slot in (0, 1):
        at = header.slot_offset(slot)
        record = decode_record_header(image[at:], header.slot_size)
        if record is not None:
            body = image[
                at + RECORD_HEADER_SIZE : at + RECORD_HEADER_SIZE + record.length
            ]
            found.append((slot, record.sequence, body))
    return found


def test_round_trip_and_previous_generation(slotted: SessionStorage) -> None:
    assert slotted.load_checkpoint() == b""
    assert slotted.load_previous() is None
    slotted.save_checkpoint(b"one")
    assert slotted.load_checkpoint() == b"one"
    assert slotted.load_previous() is None
    slotted.save_checkpoint(b"two")
    assert slotted.load_checkpoint() == b"two"
    assert slotted.load_previous() == b"one"
    slotted.save_checkpoint(bytearray(b"three"))
    assert slotted.load_checkpoint() == b"three"
    assert slotted.load_previous() == b"two"
    assert sorted(os.listdir(slotted.location)) == ["session.slots"]


def test_saves_alternate_slots_in_place(slotted: SessionStorage) -> None:
    slotted.save_checkpoint(b"a")
    inode = os.stat(slotted.paths.slots).st_ino
    size = os.stat(slotted.paths.slots).st_size
    slotted.save_checkpoint(b"b")
    slotted.save_checkpoint(b"c")
    assert os.stat(slotted.paths.slots).st_ino == inode
    assert os.stat(slotted.paths.slots).st_size == size
    assert sorted(records(slotted), key=lambda r: r[1]) == [(1, 2, b"b"), (0, 3, b"c")]


def test_a_record_that_does_not_fit_rebuilds_a_larger_file(
    slotted: SessionStorage,
) -> None:
    slotted.save_checkpoint(b"small")
    before = os.stat(slotted.paths.slots)
    big = os.urandom(100_000)
    slotted.save_checkpoint(big)
    after = os.stat(slotted.paths.slots)
    assert after.st_ino != before.st_ino
    assert after.st_size > before.st_size
    assert slotted.load_checkpoint() == big
    assert slotted.load_previous() == b"small"
    slotted.save_checkpoint(b"small again")
    assert os.stat(slotted.paths.slots).st_ino == after.st_ino
    assert slotted.load_previous() == big


def test_a_torn_newest_slot_falls_back_to_the_other(slotted: SessionStorage) -> None:
    slotted.save_checkpoint(b"good old")
    slotted.save_checkpoint(b"torn new")
    slot, _, _ = max(records(slotted), key=lambda r: r[1])
    header = decode_file_header(Path(slotted.paths.slots).read_bytes())
    with open(slotted.paths.slots, "r+b") as f:
        f.seek(header.slot_offset(slot) + RECORD_HEADER_SIZE)
        f.write(b"X")
    assert slotted.load_checkpoint() == b"good old"
    assert slotted.load_previous() is None
    slotted.save_checkpoint(b"newest")
    assert slotted.load_checkpoint() == b"newest"
    assert slotted.load_previous() == b"good old"


def test_a_file_with_no_valid_record_is_reported_not_read_as_empty(
    slotted: SessionStorage,
) -> None:
    slotted.save_checkpoint(b"x")
    header = decode_file_header(Path(slotted.paths.slots).read_bytes())
    with open(slotted.paths.slots, "r+b") as f:
        f.seek(header.slot_offset(0) + RECORD_HEADER_SIZE)
        f.write(b"Y")
    with pytest.raises(CorruptCheckpointError) as info:
        slotted.load_checkpoint()
    assert info.value.filename == slotted.paths.slots
    assert slotted.paths.slots in str(info.value)


def test_a_leftover_next_file_locks_a_slotted_session(slotted: SessionStorage) -> None:
    slotted.save_checkpoint(b"kept")
    Path(slotted.paths.next).write_bytes(b"")
    with pytest.raises(LockedStorageError) as info:
        slotted.save_checkpoint(b"new")
    assert (info.value.errno, info.value.stale) == (errno.EEXIST, True)
    assert info.value.filename == slotted.paths.next
    assert slotted.lock_state() is LockState.STALE
    assert slotted.break_stale_lock()
    slotted.save_checkpoint(b"new")
    assert slotted.load_checkpoint() == b"new"


def test_a_live_writer_locks_a_slotted_session(slotted: SessionStorage) -> None:
    import fcntl

    slotted.save_checkpoint(b"kept")
    fd = os.open(slotted.location, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LockedStorageError) as info:
            slotted.save_checkpoint(b"new")
    finally:
        os.close(fd)
    assert (info.value.errno, info.value.stale) == (errno.EWOULDBLOCK, False)
    assert slotted.load_checkpoint() == b"kept"


def test_a_slotted_save_refuses_a_session_in_the_replace_layout(
    backend: str, tmp_path: Path
) -> None:
    replace = SessionStorage.create(tmp_path)
    replace.save_checkpoint(b"replace layout")
    slotted = SessionStorage(replace.location, layout=Layout.SLOTTED)
    with pytest.raises(FileExistsError) as info:
        slotted.save_checkpoint(b"new")
    assert info.value.filename == replace.session_file
    assert slotted.load_checkpoint() == b"replace layout"
    assert os.listdir(replace.location) == ["session"]


def test_load_detects_the_layout_whatever_the_storage_says(
    slotted: SessionStorage,
) -> None:
    slotted.save_checkpoint(b"in slots")
    assert SessionStorage(slotted.location).load_checkpoint() == b"in slots"


def test_the_replace_layout_keeps_no_previous_generation(
    storage: SessionStorage,
) -> None:
    storage.save_checkpoint(b"one")
    storage.save_checkpoint(b"two")
    assert storage.load_previous() is None


def test_convert_to_slotted_and_back(storage: SessionStorage) -> None:
    storage.save_checkpoint(b"the checkpoint")
    slotted = storage.convert_layout(Layout.SLOTTED)
    assert slotted.layout is Layout.SLOTTED
    assert os.listdir(storage.location) == ["session.slots"]
    assert slotted.load_checkpoint() == b"the checkpoint"
    slotted.save_checkpoint(b"saved slotted")
    assert slotted.load_previous() == b"the checkpoint"
    back = slotted.convert_layout(Layout.REPLACE)
    assert back.layout is Layout.REPLACE
    assert os.listdir(storage.location) == ["session"]
    assert back.load_checkpoint() == b"saved slotted"
    back.save_checkpoint(b"replaced again")
    assert back.load_checkpoint() == b"replaced again"


def test_converting_an_empty_session_changes_nothing_on_disk(
    storage: SessionStorage,
) -> None:
    slotted = storage.convert_layout(Layout.SLOTTED)
    assert os.listdir(storage.location) == []
    slotted.save_checkpoint(b"first")
    assert os.listdir(storage.location) == ["session.slots"]


def test_an_interrupted_conversion_loads_the_same_checkpoint_and_finishes(
    storage: SessionStorage,
) -> None:
    storage.save_checkpoint(b"before")
    slotted = storage.convert_layout(Layout.SLOTTED)
    # The state a crash leaves between putting session.slots in place and
    # removing session (to slotted), or between renaming session in and removing
    # session.slots (to replace): both files, holding the same checkpoint.
    Path(storage.session_file).write_bytes(b"before")
    assert storage.load_checkpoint() == b"before"
    assert slotted.load_checkpoint() == b"before"
    storage.convert_layout(Layout.SLOTTED)
    assert os.listdir(storage.location) == ["session.slots"]
    assert slotted.load_checkpoint() == b"before"


def test_conversion_respects_the_lock(storage: SessionStorage) -> None:
    storage.save_checkpoint(b"kept")
    Path(storage.paths.next).write_bytes(b"")
    with pytest.raises(LockedStorageError):
        storage.convert_layout(Layout.SLOTTED)
    assert sorted(os.listdir(storage.location)) == ["session", "session.next"]


def test_a_missing_slotted_session_raises_naming_it(
    backend: str, tmp_path: Path
) -> None:
    storage = SessionStorage(tmp_path / "gone.session", layout=Layout.SLOTTED)
    with pytest.raises(FileNotFoundError) as info:
        storage.save_checkpoint(b"x")
    assert info.value.filename == storage.location
    with pytest.raises(FileNotFoundError):
        storage.load_checkpoint()
    with pytest.raises(FileNotFoundError):
        storage.load_previous()


def test_exhausted_sequence_numbers_are_reported_naming_the_file(
    slotted: SessionStorage,
) -> None:
    from sessionstore._slots_format import build_slots_file

    Path(slotted.paths.slots).write_bytes(build_slots_file(b"last", 2**64 - 1, None))
    with pytest.raises(CorruptCheckpointError) as info:
        slotted.save_checkpoint(b"one more")
    assert info.value.filename == slotted.paths.slots
    assert "exhausted" in str(info.value)
    assert slotted.load_checkpoint() == b"last"


def test_corrupt_checkpoint_error_is_a_value_error_that_pickles() -> None:
    import pickle

    error = CorruptCheckpointError("/r/s.session/session.slots", "no record passes")
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.filename, str(copy)) == (error.filename, str(error))


def test_a_scan_reports_the_size_of_the_newest_valid_record(
    slotted: SessionStorage,
) -> None:
    from sessionstore import SessionStorageRepository

    repo = SessionStorageRepository(os.path.dirname(slotted.location))
    assert [info.checkpoint_size for info in repo.scan()] == [None]
    slotted.save_checkpoint(b"x" * 100)
    slotted.save_checkpoint(b"y" * 7)
    assert [info.checkpoint_size for info in repo.scan()] == [7]


def test_an_in_place_save_makes_the_session_young_for_scan_and_prune(
    slotted: SessionStorage,
) -> None:
    import datetime

    from sessionstore import SessionStorageRepository

    repo = SessionStorageRepository(os.path.dirname(slotted.location))
    slotted.save_checkpoint(b"first")
    slotted.save_checkpoint(b"second")
    # The directory looks a month old: only the slots file shows the saves.
    month_ago = os.stat(slotted.location).st_mtime_ns - 30 * 86_400 * 10**9
    date_session(slotted.location, month_ago)
    slotted.save_checkpoint(b"third, in place")
    (info,) = repo.scan()
    age = datetime.datetime.now(datetime.timezone.utc) - info.modified
    assert age < datetime.timedelta(minutes=5)
    assert repo.prune(older_than=datetime.timedelta(days=7)) == []
    assert slotted.load_checkpoint() == b"third, in place"


def test_a_load_racing_conversions_never_returns_empty_for_a_saved_session(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion lands after each look a load takes, once: between its
    read of ``session``, its read of ``session.slots`` and its check that
    neither exists, so that each look on its own finds nothing."""
    storage = SessionStorage.create(tmp_path, layout=Layout.SLOTTED)
    storage.save_checkpoint(b"precious")
    converter = SessionStorage(storage.location)
    current = _backend.active.current

    def then_convert(look: Callable[..., T], layout: Layout) -> Callable[..., T]:
        fired = False

        def wrapped(*args: object) -> T:
            nonlocal fired
            try:
                return look(*args)
            finally:
                if not fired:
                    fired = True
                    converter.convert_layout(layout)

        return wrapped

    monkeypatch.setattr(
        _backend.active,
        "current",
        attrs.evolve(
            current,
            load=then_convert(current.load, Layout.REPLACE),
            load_slots=then_convert(current.load_slots, Layout.SLOTTED),
        ),
    )
    monkeypatch.setattr(
        os.path, "lexists", then_convert(os.path.lexists, Layout.REPLACE)
    )
    monkeypatch.setattr(os, "listdir", then_convert(os.listdir, Layout.REPLACE))
    assert storage.load_checkpoint() == b"precious"


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another user: needs root")
@pytest.mark.parametrize("layout", list(Layout))
def test_a_conversion_it_may_not_look_into_names_the_whole_path(
    backend: str, layout: Layout
) -> None:
    """A session directory its owner may read but not search (mode 0400): the
    directory opens and locks, the first look inside fails with EACCES."""
    base = tempfile.mkdtemp(dir="/var/tmp", prefix="sessionstore-test-")
    try:
        os.chmod(base, 0o755)
        storage = SessionStorage.create(base)
        storage.save_checkpoint(b"kept")
        os.chown(storage.location, forked.NOBODY, forked.NOBODY)
        os.chmod(storage.location, 0o400)
        expected = os.path.join(storage.location, "session.next")

        def convert() -> str:
            try:
                storage.convert_layout(layout)
            except PermissionError as exc:
                return f"refused naming {exc.filename}"
            return "converted"

        assert forked.as_nobody(convert) == f"refused naming {expected}"
        os.chmod(storage.location, 0o700)
        assert storage.load_checkpoint() == b"kept"
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_load_previous_refuses_what_load_checkpoint_refuses(
    storage: SessionStorage, kind: str, tmp_path: Path
) -> None:
    checkpoint = Path(storage.paths.checkpoint)
    if kind == "symlink":
        (tmp_path / "elsewhere").write_bytes(b"not this session's")
        checkpoint.symlink_to(tmp_path / "elsewhere")
    else:
        checkpoint.mkdir()
    with pytest.raises(OSError) as loading:
        storage.load_checkpoint()
    with pytest.raises(OSError) as previous:
        storage.load_previous()
    assert type(previous.value) is type(loading.value)
    assert previous.value.errno == loading.value.errno
    assert previous.value.filename == loading.value.filename == str(checkpoint)


def test_a_buffer_changed_during_a_save_still_leaves_a_loadable_record(
    backend: str, tmp_path: Path
) -> None:
    """Another thread flips bytes of the bytearray being saved. Each save that
    returns must leave its own record as the newest whole one: a load that
    fell back to the checkpoint saved before would mean a torn record."""
    storage = SessionStorage.create(tmp_path, layout=Layout.SLOTTED)
    buffer = bytearray(4 << 20)
    storage.save_checkpoint(bytes(buffer))
    stop = threading.Event()

    def flip() -> None:
        at = 0
        while not stop.is_set():
            buffer[at % len(buffer)] ^= 1
            at += 4099

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for round_ in range(10):
            before = f"saved before round {round_}".encode()
            storage.save_checkpoint(before)
            storage.save_checkpoint(buffer)
            loaded = storage.load_checkpoint()
            assert len(loaded) == len(buffer), f"round {round_}: fell back"
    finally:
        stop.set()
        flipper.join()
