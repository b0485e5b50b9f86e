"""The Checkbox face: its directories, modes, ids and behaviour, on both backends."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import forked
import sessionstore
from sessionstore.compat import checkbox
from sessionstore.compat.checkbox import (
    LockedStorageError,
    SessionStorage,
    WellKnownDirsHelper,
)

ID = re.compile(r"^pbox-\d{4}-\d\d-\d\dT\d\d\.\d\d\.\d\d\.\d{6}(_\(\d+\))?$")


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Checkbox's base directory moved to a fresh one that every user may enter."""
    parent = tempfile.mkdtemp(prefix="sessionstore-checkbox-")
    os.chmod(parent, 0o755)
    moved = Path(parent) / "checkbox-ng"
    monkeypatch.setattr(WellKnownDirsHelper, "base_of_everything", str(moved))
    yield moved
    shutil.rmtree(parent)


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_paths_follow_the_base(base: Path) -> None:
    assert WellKnownDirsHelper.session_repository() == str(base / "sessions")
    assert WellKnownDirsHelper.session_dir("x") == str(base / "sessions/x.session")
    assert WellKnownDirsHelper.io_logs("x") == str(base / "sessions/x.session/io-logs")
    assert WellKnownDirsHelper.session_share("x") == str(
        base / "sessions/x.session/session-share"
    )
    assert WellKnownDirsHelper.manifest_file() == str(base / "machine-manifest.json")
    assert SessionStorage("x").location == WellKnownDirsHelper.session_dir("x")


def test_create_makes_a_session_with_checkbox_ids_and_dirs(
    backend: str, base: Path
) -> None:
    storage = SessionStorage.create("pbox-")
    assert ID.match(storage.id), storage.id
    assert storage.location == WellKnownDirsHelper.session_dir(storage.id)
    assert sorted(os.listdir(storage.location)) == ["io-logs", "session-share"]
    again = SessionStorage.create()
    assert again.id != storage.id


def test_modes_let_other_users_share_files_but_not_the_checkpoint(
    backend: str, base: Path
) -> None:
    old = os.umask(0o077)
    try:
        storage = SessionStorage.create("pbox-")
    finally:
        os.umask(old)
    storage.save_checkpoint(b"state")
    assert mode(base) == 0o1777
    assert mode(WellKnownDirsHelper.session_repository()) == 0o1777
    assert mode(storage.location) == 0o711
    assert mode(WellKnownDirsHelper.session_share(storage.id)) == 0o1777
    assert mode(WellKnownDirsHelper.io_logs(storage.id)) == 0o1777
    assert mode(storage.session_file) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="acts as another user: needs root")
def test_a_job_as_another_user_writes_shared_files_but_cannot_touch_the_checkpoint(
    backend: str, base: Path
) -> None:
    storage = SessionStorage.create("pbox-")
    storage.save_checkpoint(b"state")
    share = WellKnownDirsHelper.session_share(storage.id)
    logs = WellKnownDirsHelper.io_logs(storage.id)

    def lock_session_directory() -> None:
        # A lock on the directory is the writers' lock: one taken by a user who
        # cannot write the session would refuse every save of its owner.
        fd = os.open(storage.location, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)

    def job() -> str:
        done = []
        for directory in (share, logs):
            Path(directory, "from-job").write_bytes(b"job output")
            done.append("wrote")
        for attempt in (
            lambda: Path(storage.session_file).write_bytes(b"evil"),
            lambda: Path(storage.location, "session.next").write_bytes(b"lock"),
            lambda: os.rename(Path(share, "from-job"), storage.session_file),
            lambda: os.unlink(storage.session_file),
            lock_session_directory,
        ):
            try:
                attempt()
            except PermissionError:
                done.append("refused")
            else:
                done.append("allowed")
        return " ".join(done)

    refused = " ".join(["refused"] * 5)
    assert forked.as_nobody(job) == f"wrote wrote {refused}"
    assert storage.load_checkpoint() == b"state"
    storage.save_checkpoint(b"next")
    storage.remove()
    assert not os.path.exists(storage.location)


def test_save_and_load_go_through_the_core(backend: str, base: Path) -> None:
    storage = SessionStorage.create()
    storage.save_checkpoint(b"one")
    assert SessionStorage(storage.id).load_checkpoint() == b"one"
    core = sessionstore.SessionStorage(storage.location)
    assert core.load_checkpoint() == b"one"
    with pytest.raises(TypeError):
        storage.save_checkpoint(None)  # type: ignore[arg-type]


def test_storage_list_gives_ids_youngest_first(backend: str, base: Path) -> None:
    assert WellKnownDirsHelper.get_storage_list() == []
    older = SessionStorage.create()
    younger = SessionStorage.create()
    os.utime(older.location, (1, 1))
    listed = WellKnownDirsHelper.get_storage_list()
    assert [s.id for s in listed] == [younger.id, older.id]
    assert all(type(s) is SessionStorage for s in listed)


@pytest.mark.skipif(os.geteuid() != 0, reason="owns a session as another user")
def test_storage_list_leaves_out_other_users_sessions(backend: str, base: Path) -> None:
    mine = SessionStorage.create()
    theirs = SessionStorage.create()
    os.chown(theirs.location, forked.NOBODY, forked.NOBODY)
    listed_by_root = {s.id for s in WellKnownDirsHelper.get_storage_list()}
    assert listed_by_root == {mine.id, theirs.id}

    def listing() -> str:
        return " ".join(s.id for s in WellKnownDirsHelper.get_storage_list())

    assert forked.as_nobody(listing) == theirs.id


def test_remove_logs_and_returns_when_it_cannot_remove(
    backend: str, base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    real = SessionStorage.create()
    os.symlink(real.location, WellKnownDirsHelper.session_dir("link"))
    with caplog.at_level(logging.WARNING, "plainbox.session.storage"):
        SessionStorage("link").remove()
    assert "Cannot remove" in caplog.text
    real.remove()
    assert not os.path.exists(real.location)


def test_checkbox_s_retry_after_a_leftover_lock_saves(backend: str, base: Path) -> None:
    storage = SessionStorage.create()
    Path(storage.location, "session.next").write_bytes(b"")
    # What Checkbox's SessionManager.checkpoint() does.
    try:
        storage.save_checkpoint(b"x")
    except LockedStorageError as exc:
        locked = exc
        storage.break_lock()
        storage.save_checkpoint(b"x")
    else:
        pytest.fail("a leftover session.next did not lock the storage")
    assert locked.errno == errno.EEXIST
    assert os.listdir(storage.location).count("session.next") == 0
    assert storage.load_checkpoint() == b"x"


def test_module_names_checkbox_imports() -> None:
    for name in ("SessionStorage", "WellKnownDirsHelper", "LockedStorageError"):
        assert hasattr(checkbox, name)
    assert checkbox.LockedStorageError is sessionstore.LockedStorageError
