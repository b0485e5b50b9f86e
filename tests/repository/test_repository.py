"""scan() and prune(): what a repository reports about its sessions, and removes."""

from __future__ import annotations

import datetime
import errno
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import forked
from session_age import date_session
from sessionstore import (
    LockState,
    SessionInfo,
    SessionStorage,
    SessionStorageRepository,
    _backend,
)
from sessionstore._fallback import listing
from sessionstore._naming import NEXT_NAME, SLOTS_NAME, plan_tombstone_name
from sessionstore._repository import _remove_unless_held, describe

UTC = datetime.timezone.utc
DAY_NS = 86_400 * 10**9


def make(
    repo: Path, data: bytes | None = None, *, age_days: float = 0
) -> SessionStorage:
    """A session ``age_days`` old, with ``data`` as checkpoint unless that is None."""
    storage = SessionStorage.create(repo)
    if data is not None:
        storage.save_checkpoint(data)
    set_age(storage, age_days)
    return storage


def set_age(storage: SessionStorage, age_days: float) -> None:
    mtime_ns = int(datetime.datetime.now(UTC).timestamp() * 1e9 - age_days * DAY_NS)
    date_session(storage.location, mtime_ns)


@contextmanager
def held(storage: SessionStorage) -> Iterator[None]:
    """The session's lock held, as a live writer inside a save holds it."""
    fd = os.open(storage.location, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def leave_stale_lock(storage: SessionStorage) -> None:
    """What a writer that died inside a save leaves behind."""
    Path(storage.location, NEXT_NAME).write_bytes(b"half")
    set_age(storage, 0)


def test_scan_reports_id_location_time_size_and_lock(
    backend: str, tmp_path: Path
) -> None:
    storage = make(tmp_path, b"x" * 1234)
    mtime_ns = 1_700_000_000_123_456_789
    date_session(storage.location, mtime_ns)
    (info,) = SessionStorageRepository(tmp_path).scan()
    assert info == SessionInfo(
        id=storage.id,
        location=storage.location,
        modified=datetime.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC),
        checkpoint_size=1234,
        lock=LockState.UNLOCKED,
    )
    assert info.modified.utcoffset() == datetime.timedelta(0)


def test_a_session_without_checkpoint_has_no_size(backend: str, tmp_path: Path) -> None:
    make(tmp_path, None)
    make(tmp_path, b"")
    sizes = {i.checkpoint_size for i in SessionStorageRepository(tmp_path).scan()}
    assert sizes == {None, 0}


def test_a_checkpoint_no_load_returns_has_no_size(backend: str, tmp_path: Path) -> None:
    """A ``session`` that is a directory or a symlink, or a slots file with no
    whole record: ``load_checkpoint()`` raises for each, so no size is shown."""
    directory, link, damaged = (make(tmp_path, None) for _ in range(3))
    os.mkdir(os.path.join(directory.location, "session"))
    Path(tmp_path, "outside").write_bytes(b"x" * 100)
    os.symlink(tmp_path / "outside", os.path.join(link.location, "session"))
    Path(damaged.location, SLOTS_NAME).write_bytes(b"\xff" * 8192)
    for storage in (directory, link, damaged):
        with pytest.raises((OSError, ValueError)):
            storage.load_checkpoint()
    scanned = SessionStorageRepository(tmp_path).scan()
    assert {i.location: i.checkpoint_size for i in scanned} == {
        s.location: None for s in (directory, link, damaged)
    }
    assert describe(link.location).checkpoint_size is None


def test_scan_lists_what_get_storage_list_lists_in_the_same_order(
    backend: str, tmp_path: Path
) -> None:
    for age in (3, 1, 2, 5, 4):
        make(tmp_path, b"c", age_days=age)
    (tmp_path / "file.session").write_bytes(b"")
    (tmp_path / ".hidden.session").mkdir()
    (tmp_path / "link.session").symlink_to(tmp_path / ".hidden.session")
    repo = SessionStorageRepository(tmp_path)
    infos = repo.scan()
    assert [i.location for i in infos] == [s.location for s in repo.get_storage_list()]
    assert len(infos) == 5
    assert [i.modified for i in infos] == sorted(
        (i.modified for i in infos), reverse=True
    )


def test_scan_reports_each_lock_state(backend: str, tmp_path: Path) -> None:
    unlocked = make(tmp_path, b"u", age_days=3)
    stale = make(tmp_path, b"s", age_days=2)
    leave_stale_lock(stale)
    busy = make(tmp_path, b"h", age_days=1)
    repo = SessionStorageRepository(tmp_path)
    with held(busy):
        locks = {i.location: i.lock for i in repo.scan()}
    assert locks == {
        unlocked.location: LockState.UNLOCKED,
        stale.location: LockState.STALE,
        busy.location: LockState.HELD,
    }
    # The same answers the per-session probe gives.
    assert {loc: SessionStorage(loc).lock_state() for loc in locks} == {
        unlocked.location: LockState.UNLOCKED,
        stale.location: LockState.STALE,
        busy.location: LockState.UNLOCKED,
    }


def test_a_missing_repository_scans_empty(backend: str, tmp_path: Path) -> None:
    assert SessionStorageRepository(tmp_path / "missing").scan() == []


def test_a_repository_that_is_a_file_raises(backend: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        SessionStorageRepository(tmp_path / "file").scan()


def _scan_as_nobody(location: str | Path) -> str:
    """What a scan of ``location`` by uid 65534 did."""

    def scan() -> str:
        try:
            SessionStorageRepository(location).scan()
        except PermissionError as exc:
            return f"refused naming {exc.filename}"
        return "scanned"

    return forked.as_nobody(scan)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another user: needs root")
def test_a_repository_it_may_not_read_raises(backend: str) -> None:
    # Outside pytest's own temporary directories, which only root may enter:
    # the repository itself must be what is refused.
    base = Path(tempfile.mkdtemp(prefix="sessionstore-other-user-"))
    try:
        base.chmod(0o755)
        repo = base / "repo"
        session = make(repo, b"x")
        repo.chmod(0o755)
        # Sessions are made private (0700); this one is opened to all.
        Path(session.location).chmod(0o755)
        assert _scan_as_nobody(repo) == "scanned"
        repo.chmod(0o700)
        assert _scan_as_nobody(repo) == f"refused naming {repo}"
    finally:
        shutil.rmtree(base)


def test_a_session_removed_between_listing_and_inspection_is_left_out(
    tmp_path: Path,
) -> None:
    # Only the fallback can be stopped between the two; the native listing runs
    # the same steps in one call and is compared with it below.
    keep = make(tmp_path, b"k", age_days=1)
    gone_with_checkpoint = make(tmp_path, b"g", age_days=2)
    gone_empty = make(tmp_path, None, age_days=3)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        listed, _ = listing._listed(str(tmp_path), dir_fd, tombstones=False)
        gone_with_checkpoint.remove()
        gone_empty.remove()
        scanned = [
            listing._scanned(str(tmp_path), dir_fd, name, st) for name, st in listed
        ]
    finally:
        os.close(dir_fd)
    assert [s and s[0] for s in scanned] == [
        os.path.basename(keep.location),
        None,
        None,
    ]


def awkward_repository(repo: Path) -> None:
    """Everything a listing must tell apart, and ties only the name can order."""
    tied = [
        b"b.session",
        b"a.session",
        b"\xff-undecodable.session",
        "é.session".encode(),
    ]
    for name in tied:
        os.makedirs(os.path.join(bytes(repo), name))
    SessionStorage(repo / "a.session").save_checkpoint(b"12345")
    leave_stale_lock(SessionStorage(repo / "b.session"))
    for name in tied:
        date_session(os.path.join(bytes(repo), name), 5 * DAY_NS)
    old = SessionStorage(repo / "old.session")
    os.mkdir(old.location)
    os.utime(old.location, ns=(DAY_NS, DAY_NS))
    (repo / "file.session").write_bytes(b"")
    (repo / ".hidden.session").mkdir()
    (repo / "link.session").symlink_to(repo / "old.session")
    (repo / plan_tombstone_name("x.session", "ab")).mkdir()
    (repo / plan_tombstone_name("y.session", "cd")).write_bytes(b"")
    (repo / plan_tombstone_name("z.session", "ef")).symlink_to(repo / "old.session")


def test_both_backends_list_and_scan_alike(tmp_path: Path) -> None:
    awkward_repository(tmp_path)
    native = _backend.load_native()
    python = _backend.PYTHON
    location = str(tmp_path)
    assert native.list_sessions(location) == python.list_sessions(location)
    assert native.scan_sessions(location) == python.scan_sessions(location)
    names = python.list_sessions(location)
    assert names is not None
    assert names[-1] == "old.session"
    assert names[:4] == sorted(names[:4])
    assert len(names) == 5
    scanned = python.scan_sessions(location)
    assert scanned is not None
    assert [t[0] for t in scanned[1]] == [plan_tombstone_name("x.session", "ab")]
    missing = str(tmp_path / "missing")
    assert native.list_sessions(missing) is python.list_sessions(missing) is None
    assert native.scan_sessions(missing) is python.scan_sessions(missing) is None


def test_both_backends_agree_on_a_repository_big_enough_for_threads(
    tmp_path: Path,
) -> None:
    # More sessions than the native listing stats on one thread.
    for i in range(3000):
        session = tmp_path / f"s{i:04}.session"
        session.mkdir()
        os.utime(session, ns=(i % 700 * 10**9, i % 700 * 10**9))
        if i % 3 == 0:
            (session / "session").write_bytes(b"x" * i)
    location = str(tmp_path)
    native = _backend.load_native()
    scanned = native.scan_sessions(location)
    assert scanned == _backend.PYTHON.scan_sessions(location)
    assert native.list_sessions(location) == _backend.PYTHON.list_sessions(location)
    assert scanned is not None
    assert len(scanned[0]) == 3000


@pytest.mark.parametrize("function", ["list_sessions", "scan_sessions"])
def test_both_backends_raise_alike_naming_the_repository(
    tmp_path: Path, function: str
) -> None:
    (tmp_path / "file").write_bytes(b"")
    for chosen in (_backend.load_native(), _backend.PYTHON):
        with pytest.raises(NotADirectoryError) as raised:
            getattr(chosen, function)(str(tmp_path / "file"))
        assert raised.value.filename == str(tmp_path / "file")


def test_describe_reports_one_session_as_scan_does(
    backend: str, tmp_path: Path
) -> None:
    storage = make(tmp_path, b"abc")
    assert [describe(storage.location)] == SessionStorageRepository(tmp_path).scan()
    with pytest.raises(FileNotFoundError) as raised:
        describe(str(tmp_path / "missing.session"))
    assert raised.value.filename == str(tmp_path / "missing.session")


def names(infos: list[SessionInfo]) -> list[str]:
    return [i.id for i in infos]


def test_prune_keep_removes_all_but_the_n_youngest(
    backend: str, tmp_path: Path
) -> None:
    sessions = [make(tmp_path, b"x", age_days=age) for age in (1, 2, 3, 4)]
    repo = SessionStorageRepository(tmp_path)
    removed = repo.prune(keep=2)
    assert names(removed) == [s.id for s in sessions[2:]]
    assert repo.get_storage_list() == sessions[:2]
    assert not any(os.path.lexists(s.location) for s in sessions[2:])


def test_prune_older_than_removes_the_old_ones(backend: str, tmp_path: Path) -> None:
    young = make(tmp_path, b"x", age_days=1)
    old = make(tmp_path, b"x", age_days=10)
    repo = SessionStorageRepository(tmp_path)
    assert names(repo.prune(older_than=datetime.timedelta(days=7))) == [old.id]
    assert repo.get_storage_list() == [young]


def test_prune_with_both_limits_spares_what_either_spares(
    backend: str, tmp_path: Path
) -> None:
    recent = [make(tmp_path, b"x", age_days=age) for age in (1, 2, 3)]
    old = [make(tmp_path, b"x", age_days=age) for age in (10, 11)]
    repo = SessionStorageRepository(tmp_path)
    # keep=1 alone would remove four; the age spares the recent ones.
    removed = repo.prune(keep=1, older_than=datetime.timedelta(days=7))
    assert names(removed) == [s.id for s in old]
    assert repo.get_storage_list() == recent


def test_a_dry_run_names_the_same_sessions_and_removes_nothing(
    backend: str, tmp_path: Path
) -> None:
    sessions = [make(tmp_path, b"x", age_days=age) for age in (1, 2, 3)]
    tombstone = tmp_path / plan_tombstone_name("old.session", "dead")
    tombstone.mkdir()
    repo = SessionStorageRepository(tmp_path)
    planned = repo.prune(keep=1, dry_run=True)
    assert repo.get_storage_list() == sessions
    assert tombstone.is_dir()
    assert repo.prune(keep=1) == planned


def test_prune_never_removes_a_held_session(backend: str, tmp_path: Path) -> None:
    busy = make(tmp_path, b"x", age_days=30)
    idle = make(tmp_path, b"x", age_days=1)
    stale = make(tmp_path, b"x", age_days=20)
    leave_stale_lock(stale)
    set_age(stale, 20)
    repo = SessionStorageRepository(tmp_path)
    with held(busy):
        removed = repo.prune(keep=0)
    assert sorted(names(removed)) == sorted([idle.id, stale.id])
    assert repo.get_storage_list() == [busy]


def test_a_session_locked_after_the_scan_is_not_removed(
    backend: str, tmp_path: Path
) -> None:
    storage = make(tmp_path, b"precious")
    (info,) = SessionStorageRepository(tmp_path).scan()
    assert info.lock is LockState.UNLOCKED
    with held(storage):
        assert _remove_unless_held(info) is False
    assert storage.load_checkpoint() == b"precious"
    assert _remove_unless_held(info) is True
    assert not os.path.lexists(storage.location)


def test_prune_finishes_interrupted_removals(backend: str, tmp_path: Path) -> None:
    session = make(tmp_path, b"x", age_days=1)
    tombstone = tmp_path / plan_tombstone_name("pbox-old.session", "0123dead")
    (tombstone / "io-logs").mkdir(parents=True)
    (tombstone / "session").write_bytes(b"half removed")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    (tombstone / "io-logs" / "link").symlink_to(outside)
    repo = SessionStorageRepository(tmp_path)
    (leftover,) = repo.prune(keep=5)
    assert leftover.leftover
    assert leftover.location == str(tombstone)
    assert leftover.id == "pbox-old"
    assert not tombstone.exists()
    assert (outside / "precious").read_bytes() == b"keep"
    assert repo.get_storage_list() == [session]


def test_prune_of_a_missing_repository_removes_nothing(
    backend: str, tmp_path: Path
) -> None:
    assert SessionStorageRepository(tmp_path / "missing").prune(keep=0) == []


@pytest.mark.parametrize(
    "limits",
    [{}, {"keep": -1}, {"older_than": datetime.timedelta(days=-1)}],
)
def test_prune_refuses_bad_limits_before_touching_anything(
    backend: str, tmp_path: Path, limits: dict[str, object]
) -> None:
    session = make(tmp_path, b"x", age_days=100)
    with pytest.raises(ValueError):
        SessionStorageRepository(tmp_path).prune(**limits)  # type: ignore[arg-type]
    assert SessionStorageRepository(tmp_path).get_storage_list() == [session]


def test_prune_spares_a_session_saved_after_the_scan(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime

    import sessionstore._repository as repository_module
    from sessionstore._prune import plan_prune

    storage = SessionStorage.create(tmp_path)
    storage.save_checkpoint(b"old")
    old_ns = os.stat(storage.location).st_mtime_ns - 30 * 86_400 * 10**9
    date_session(storage.location, old_ns)

    def plan_then_save(*args: object, **kwargs: object) -> object:
        doomed = plan_prune(*args, **kwargs)  # type: ignore[arg-type]
        storage.save_checkpoint(b"saved between the scan and the removal")
        return doomed

    monkeypatch.setattr(repository_module, "plan_prune", plan_then_save)
    repo = SessionStorageRepository(tmp_path)
    assert repo.prune(older_than=datetime.timedelta(days=7)) == []
    assert storage.load_checkpoint() == b"saved between the scan and the removal"


def test_a_removal_that_fails_stops_no_other_and_is_raised(
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = SessionStorageRepository(str(tmp_path))
    sessions = [SessionStorage.create(tmp_path) for _ in range(4)]
    for age, storage in enumerate(sessions):
        storage.save_checkpoint(b"old")
        stamp = time.time() - 30 * 86400 - age
        date_session(storage.location, int(stamp * 1e9))
    refused = {sessions[1].location, sessions[2].location}
    remove = SessionStorage.remove

    def remove_unless_refused(storage: SessionStorage) -> None:
        if storage.location in refused:
            raise PermissionError(errno.EPERM, "refused", storage.location)
        remove(storage)

    monkeypatch.setattr(SessionStorage, "remove", remove_unless_refused)
    with (
        caplog.at_level(logging.ERROR, logger="sessionstore"),
        pytest.raises(PermissionError) as failed,
    ):
        repo.prune(keep=0)
    # Youngest first: the first failure raised, the second logged.
    assert failed.value.filename == sessions[1].location
    assert sessions[2].location in caplog.text
    left = sorted(storage.location for storage in repo.get_storage_list())
    assert left == sorted(refused)


@pytest.mark.root
def test_a_removal_the_filesystem_refuses_names_the_whole_path(
    backend: str, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a file immutable (chattr +i) needs root")
    repo = SessionStorageRepository(str(tmp_path))
    kept, stuck, gone = (make(tmp_path, b"old", age_days=days) for days in (1, 9, 10))
    Path(stuck.location, "io-logs").mkdir()
    pinned = Path(stuck.location, "io-logs", "pinned")
    pinned.write_bytes(b"")
    set_age(stuck, 9)
    chattr = subprocess.run(
        ["chattr", "+i", str(pinned)], capture_output=True, text=True, check=False
    )
    if chattr.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {chattr.stderr.strip()}")
    try:
        with pytest.raises(PermissionError) as failed:
            repo.prune(older_than=datetime.timedelta(days=5))
        # The session was renamed to its tombstone before its files went.
        (tombstone,) = [n for n in os.listdir(tmp_path) if n.startswith(".")]
        assert failed.value.filename == str(tmp_path / tombstone / "io-logs/pinned")
        assert repo.get_storage_list() == [kept]
        assert not os.path.exists(gone.location)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(tmp_path)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another user: needs root")
def test_another_users_private_session_is_reported_and_the_rest_listed(
    backend: str,
) -> None:
    """A shared repository holding root's private session (0700) and an open one:
    uid 65534 lists both, the private one as unreadable with its reason and an
    unknown lock, and a prune by that user spares it."""
    with forked.shared_directory() as base:
        repo = base / "repo"
        private = make(repo, b"private", age_days=3)  # made 0700, root's
        shared = make(repo, b"shared", age_days=2)
        Path(shared.location).chmod(0o755)
        repo.chmod(0o1777)

        def scan() -> str:
            rows = [
                f"{i.id} {i.checkpoint.value} {i.checkpoint_size} {i.lock.value} "
                f"{i.problem}"
                for i in SessionStorageRepository(str(repo) + "/").scan()
            ]
            doomed = SessionStorageRepository(repo).prune(keep=0, dry_run=True)
            return "\n".join([*rows, "prune: " + " ".join(i.id for i in doomed)])

        assert forked.as_nobody(scan).splitlines() == [
            f"{shared.id} saved 6 unlocked None",
            f"{private.id} unreadable None unknown "
            "session directory: Permission denied",
            f"prune: {shared.id}",
        ]
