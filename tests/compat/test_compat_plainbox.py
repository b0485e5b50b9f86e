"""The plainbox 0.38 face: its names, arguments and behaviour, on both backends."""

from __future__ import annotations

import datetime
import errno
import fcntl
import itertools
import logging
import os
import re
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sessionstore
from sessionstore import Layout
from sessionstore._naming import MAX_PREFIX, slug
from sessionstore.compat import checkbox, plainbox
from sessionstore.compat._client_storage import plan_client_ids
from sessionstore.compat.plainbox import (
    LockedStorageError,
    SessionStorage,
    SessionStorageRepository,
)

ID = re.compile(r"^pbox-\d{4}-\d\d-\d\dT\d\d\.\d\d\.\d\d(_\(\d+\))?$")
LINK = SessionStorageRepository._LAST_SESSION_SYMLINK


def test_ids_are_plainbox_ids_with_a_counter_when_taken() -> None:
    now = datetime.datetime(2024, 1, 31, 12, 0, 5, 123456, tzinfo=datetime.timezone.utc)
    ids = plan_client_ids("pbox-", now, plainbox.ID_STAMP)
    assert [next(ids) for _ in range(3)] == [
        "pbox-2024-01-31T12.00.05",
        "pbox-2024-01-31T12.00.05_(1)",
        "pbox-2024-01-31T12.00.05_(2)",
    ]


@given(
    prefix=st.text(max_size=300),
    now=st.datetimes(
        min_value=datetime.datetime(1970, 1, 1),
        timezones=st.just(datetime.timezone.utc),
    ),
    stamp=st.sampled_from([plainbox.ID_STAMP, checkbox.ID_STAMP]),
)
def test_every_planned_id_is_a_safe_distinct_name_that_keeps_the_time(
    prefix: str, now: datetime.datetime, stamp: str
) -> None:
    ids = list(itertools.islice(plan_client_ids(prefix, now, stamp), 50))
    assert len(set(ids)) == 50
    for session_id in ids:
        assert "/" not in session_id
        assert "\0" not in session_id
        assert not session_id.startswith(".")
        assert len((session_id + ".session").encode()) <= 255
    stamp_text = ids[0][len(slug(prefix[:MAX_PREFIX])) :]
    parsed = datetime.datetime.strptime(stamp_text, stamp)
    resolution = "microsecond" if stamp == checkbox.ID_STAMP else "second"
    expected = now.replace(tzinfo=None)
    if resolution == "second":
        expected = expected.replace(microsecond=0)
    assert parsed == expected


def test_prefixes_are_slugged_and_never_hide_a_session() -> None:
    now = datetime.datetime(2024, 1, 31, tzinfo=datetime.timezone.utc)
    assert next(plan_client_ids("../a b", now, "%Y")) == "_._a_b2024"


def test_create_takes_plainbox_038_positional_arguments(
    backend: str, tmp_path: Path
) -> None:
    base = tmp_path / "repo" / "deep"
    storage = SessionStorage.create(str(base), False, "pbox-")
    assert os.path.dirname(storage.location) == str(base)
    assert storage.location.endswith(".session")
    assert ID.match(storage.id), storage.id
    assert os.listdir(storage.location) == []
    assert not os.path.lexists(base / LINK)


def test_sessions_created_in_one_second_get_counters(
    backend: str, tmp_path: Path
) -> None:
    ids = [SessionStorage.create(str(tmp_path)).id for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(ID.match(i) for i in ids), ids
    assert any(i.endswith("_(1)") for i in ids), ids


def test_a_session_is_private_whatever_the_umask(backend: str, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        storage = SessionStorage.create(str(tmp_path))
    finally:
        os.umask(old)
    assert os.stat(storage.location).st_mode & 0o7777 == 0o700


def test_save_and_load_go_through_the_core(backend: str, tmp_path: Path) -> None:
    storage = SessionStorage.create(str(tmp_path))
    assert storage.load_checkpoint() == b""
    storage.save_checkpoint(b"one")
    storage.save_checkpoint(b"two")
    assert storage.load_checkpoint() == b"two"
    assert sessionstore.SessionStorage(storage.location).load_checkpoint() == b"two"
    assert os.listdir(storage.location) == ["session"]
    assert os.stat(storage.session_file).st_mode & 0o777 == 0o600
    with pytest.raises(TypeError):
        storage.save_checkpoint("text")  # type: ignore[arg-type]


def test_legacy_mode_links_the_new_session_and_removes_the_old(
    backend: str, tmp_path: Path
) -> None:
    first = SessionStorage.create(str(tmp_path), legacy_mode=True)
    first.save_checkpoint(b"first")
    second = SessionStorage.create(str(tmp_path), legacy_mode=True)
    assert os.readlink(tmp_path / LINK) == second.location
    assert not os.path.exists(first.location)
    # The link was replaced by rename: nothing staged is left behind.
    assert sorted(os.listdir(tmp_path)) == sorted([LINK, second.id + ".session"])
    last = SessionStorageRepository(str(tmp_path)).get_last_storage()
    assert last is not None
    assert last.location == second.location


def test_legacy_mode_never_deletes_outside_the_repository(
    backend: str, tmp_path: Path
) -> None:
    repo, outside = tmp_path / "repo", tmp_path / "precious.session"
    repo.mkdir()
    outside.mkdir()
    (outside / "data").write_bytes(b"keep")
    os.symlink(outside, repo / LINK)
    storage = SessionStorage.create(str(repo), legacy_mode=True)
    assert (outside / "data").read_bytes() == b"keep"
    assert os.readlink(repo / LINK) == storage.location


def test_legacy_mode_leaves_a_last_session_that_is_no_link(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / LINK).mkdir()
    with caplog.at_level(logging.WARNING, "plainbox.session.storage"):
        storage = SessionStorage.create(str(tmp_path), legacy_mode=True)
    assert os.path.isdir(storage.location)
    assert (tmp_path / LINK).is_dir()
    assert "not a symlink" in caplog.text


def test_last_storage_resolves_a_relative_link(backend: str, tmp_path: Path) -> None:
    storage = SessionStorage.create(str(tmp_path))
    os.symlink(os.path.basename(storage.location), tmp_path / LINK)
    last = SessionStorageRepository(str(tmp_path)).get_last_storage()
    assert last is not None
    assert last.location == storage.location


@pytest.mark.parametrize("link", ["missing.session", None])
def test_no_last_storage_for_a_broken_or_absent_link(
    tmp_path: Path, link: str | None
) -> None:
    if link is not None:
        os.symlink(link, tmp_path / LINK)
    assert SessionStorageRepository(str(tmp_path)).get_last_storage() is None


def test_storage_list_is_of_face_storages_youngest_first(
    backend: str, tmp_path: Path
) -> None:
    older = SessionStorage.create(str(tmp_path))
    younger = SessionStorage.create(str(tmp_path))
    os.utime(older.location, (1, 1))
    repo = SessionStorageRepository(str(tmp_path))
    listed = repo.get_storage_list()
    assert [s.location for s in listed] == [younger.location, older.location]
    assert all(type(s) is SessionStorage for s in listed)
    assert [s.location for s in repo] == [younger.location, older.location]
    assert SessionStorageRepository(str(tmp_path / "none")).get_storage_list() == []


def test_remove_logs_and_returns_when_it_cannot_remove(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    real = SessionStorage.create(str(tmp_path))
    link = tmp_path / "link.session"
    os.symlink(real.location, link)
    with caplog.at_level(logging.WARNING, "plainbox.session.storage"):
        SessionStorage(str(link)).remove()
    assert f"Cannot remove {link}" in caplog.text
    assert os.path.isdir(real.location)
    real.remove()
    assert not os.path.exists(real.location)
    real.remove()


def test_break_lock_removes_a_leftover(backend: str, tmp_path: Path) -> None:
    storage = SessionStorage.create(str(tmp_path))
    next_file = os.path.join(storage.location, "session.next")
    Path(next_file).write_bytes(b"torn")
    with pytest.raises(LockedStorageError) as info:
        storage.save_checkpoint(b"new")
    assert info.value.errno == errno.EEXIST
    storage.break_lock()
    storage.save_checkpoint(b"new")
    assert storage.load_checkpoint() == b"new"
    with pytest.raises(FileNotFoundError) as missing:
        storage.break_lock()
    assert missing.value.filename == next_file


def test_break_lock_leaves_the_file_of_a_live_writer(
    backend: str, tmp_path: Path
) -> None:
    storage = SessionStorage.create(str(tmp_path))
    next_file = os.path.join(storage.location, "session.next")
    # A live writer: the directory's lock held, its next file being written.
    dir_fd = os.open(storage.location, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        Path(next_file).write_bytes(b"in progress")
        storage.break_lock()
        assert Path(next_file).read_bytes() == b"in progress"
        with pytest.raises(LockedStorageError) as info:
            storage.save_checkpoint(b"second writer")
        assert info.value.errno == errno.EWOULDBLOCK
    finally:
        os.close(dir_fd)


def test_locked_storage_error_may_be_raised_bare() -> None:
    assert LockedStorageError is sessionstore.LockedStorageError
    with pytest.raises(OSError) as raised:
        raise LockedStorageError
    error = raised.value
    assert isinstance(error, LockedStorageError)
    assert error.errno is None
    assert error.filename is None
    assert not error.stale
    saver = mock.Mock(side_effect=LockedStorageError)
    with pytest.raises(LockedStorageError):
        saver(b"data")


def test_slotted_layout_is_opt_in_for_new_sessions(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced = SessionStorage.create(str(tmp_path))
    replaced.save_checkpoint(b"replace")
    monkeypatch.setattr(SessionStorage, "default_layout", Layout.SLOTTED)
    slotted = SessionStorage.create(str(tmp_path))
    slotted.save_checkpoint(b"one")
    SessionStorage(slotted.location).save_checkpoint(b"two")
    assert os.listdir(slotted.location) == ["session.slots"]
    assert SessionStorage(slotted.location).load_checkpoint() == b"two"
    # A session already saved keeps its layout.
    SessionStorage(replaced.location).save_checkpoint(b"still replace")
    assert os.listdir(replaced.location) == ["session"]


def test_default_location_falls_back_to_a_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    monkeypatch.setenv("PLAINBOX_SESSION_REPOSITORY", str(not_a_dir))
    location = SessionStorageRepository.get_default_location()
    assert location != str(not_a_dir)
    assert os.path.isdir(location)
    os.rmdir(location)
    monkeypatch.setenv("PLAINBOX_SESSION_REPOSITORY", str(tmp_path / "new"))
    assert SessionStorageRepository().location == str(tmp_path / "new")


def test_repr_and_id_are_plainbox_s() -> None:
    storage = SessionStorage("x/pbox-a.session")
    assert repr(storage) == "<SessionStorage location:'x/pbox-a.session'>"
    assert storage.id == "pbox-a"
    assert storage.session_file == "x/pbox-a.session/session"
