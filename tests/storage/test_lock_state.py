"""lock_state() and break_stale_lock(): a live writer is told from a dead one.

A live writer is another process that holds the directory's flock (the way a
save does) or one that saves in a loop; a dead one is a process killed while it
held the lock, or a ``session.next`` left behind. Each case runs on both backends
and, for the lock itself, on every filesystem the tests can mount.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import filesystems
from checkpoint_child import checkpoint_id
from sessionstore import LockedStorageError, LockState, SessionStorage
from sessionstore._lock_state import (
    LOCK_STATE_CODES,
    FileKey,
    NextFile,
    classify_lock,
    parse_proc_locks,
)

CHILD = str(Path(__file__).parents[1] / "checkpoint_child.py")

# Takes the directory's flock as a save does, optionally creates session.next,
# says so, and then either holds both until stdin closes or dies by SIGKILL.
HOLDER = """
import fcntl, os, signal, sys
location, create_next, die = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
fd = os.open(location, os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
if create_next:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    os.close(os.open(os.path.join(location, "session.next"), flags, 0o600))
if die:
    os.kill(os.getpid(), signal.SIGKILL)
print("holding", flush=True)
sys.stdin.read()
"""


class Holder:
    """A second process that holds the lock of a session until ``release()``."""

    def __init__(self, location: str, *, create_next: bool) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                HOLDER,
                location,
                str(int(create_next)),
                "0",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "holding\n"

    def release(self) -> None:
        """End the holder and wait until it is gone, so its lock is released."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            assert self.process.wait(timeout=30) == 0


def leave_next_file(
    storage: SessionStorage, content: bytes = b"half a checkpo"
) -> None:
    """What a writer that died inside a save leaves: a partial ``session.next``."""
    Path(storage.paths.next).write_bytes(content)


# -- the pure core ------------------------------------------------------------

next_files = st.none() | st.builds(NextFile, st.integers(1, 5), st.integers(0, 3))


@given(held=st.booleans(), before=next_files, after=next_files)
def test_classify_lock_is_stale_only_for_one_unchanged_file_and_no_holder(
    held: bool, before: NextFile | None, after: NextFile | None
) -> None:
    state = classify_lock(held=held, next_before=before, next_after=after)
    if held or before != after:
        assert state is LockState.HELD
    elif after is None:
        assert state is LockState.UNLOCKED
    else:
        assert state is LockState.STALE


keys = st.builds(
    FileKey, st.integers(0, 4095), st.integers(0, 2**20 - 1), st.integers(1, 2**63)
)


def proc_locks_line(number: int, key: FileKey, kind: str = "FLOCK") -> str:
    return (
        f"{number}: {kind}  ADVISORY  WRITE 4242 "
        f"{key.major:02x}:{key.minor:02x}:{key.inode} 0 EOF"
    )


@given(held=st.lists(keys, max_size=8), waiting=st.lists(keys, max_size=4))
def test_parse_proc_locks_finds_every_flock_holder_and_no_waiter(
    held: list[FileKey], waiting: list[FileKey]
) -> None:
    lines = [proc_locks_line(n, key) for n, key in enumerate(held, 1)]
    lines += [
        f"{n}: -> FLOCK  ADVISORY  WRITE 77 {k.major:x}:{k.minor:x}:{k.inode} 0 EOF"
        for n, k in enumerate(waiting, 1)
    ]
    lines += [
        proc_locks_line(99, FileKey(1, 2, 3), "POSIX"),
        "garbage",
        "1: FLOCK x y 1 a:b 0",
    ]
    assert parse_proc_locks("\n".join(lines)) == frozenset(held)


# -- one session, one process ---------------------------------------------------


def test_a_new_session_is_unlocked_and_has_nothing_to_break(
    storage: SessionStorage,
) -> None:
    assert storage.lock_state() is LockState.UNLOCKED
    assert storage.break_stale_lock() is False
    storage.save_checkpoint(b"saved")
    assert storage.lock_state() is LockState.UNLOCKED


def test_a_leftover_next_file_is_stale_and_breaking_it_lets_saves_go_on(
    storage: SessionStorage,
) -> None:
    storage.save_checkpoint(b"the good one")
    leave_next_file(storage)
    assert storage.lock_state() is LockState.STALE
    with pytest.raises(LockedStorageError) as locked:
        storage.save_checkpoint(b"blocked")
    assert (locked.value.errno, locked.value.stale) == (errno.EEXIST, True)
    assert locked.value.filename == storage.paths.next
    assert storage.load_checkpoint() == b"the good one"
    assert storage.break_stale_lock() is True
    assert not os.path.exists(storage.paths.next)
    assert storage.lock_state() is LockState.UNLOCKED
    assert storage.break_stale_lock() is False
    storage.save_checkpoint(b"after the break")
    assert storage.load_checkpoint() == b"after the break"


def test_the_lock_held_through_another_descriptor_of_this_process_is_held(
    storage: SessionStorage,
) -> None:
    import fcntl

    fd = os.open(storage.location, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        leave_next_file(storage)
        assert storage.lock_state() is LockState.HELD
        assert storage.break_stale_lock() is False
        assert os.path.exists(storage.paths.next)
    finally:
        os.close(fd)
    assert storage.lock_state() is LockState.STALE


@pytest.mark.parametrize("query", ["lock_state", "break_stale_lock"])
def test_a_missing_session_raises_file_not_found_naming_it(
    backend: str, tmp_path: Path, query: str
) -> None:
    storage = SessionStorage(tmp_path / "gone.session")
    with pytest.raises(FileNotFoundError) as missing:
        getattr(storage, query)()
    assert missing.value.filename == storage.location


# -- a second process -------------------------------------------------------------


@pytest.fixture(
    scope="module",
    params=[
        filesystems.DEFAULT,
        *filesystems.KINDS,
        filesystems.BTRFS_SUBVOLUME,
    ],
)
def filesystem(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[filesystems.Mount]:
    yield from filesystems.mount_or_skip(request.param, tmp_path_factory)


def test_a_lock_held_by_a_second_process_is_held_until_it_ends(
    backend: str, filesystem: filesystems.Mount
) -> None:
    storage = SessionStorage.create(filesystem.root / f"repo-{backend}")
    storage.save_checkpoint(b"before the holder")
    holder = Holder(storage.location, create_next=True)
    try:
        assert storage.lock_state() is LockState.HELD
        assert storage.break_stale_lock() is False
        assert os.path.exists(storage.paths.next), "a live writer's file was removed"
        with pytest.raises(LockedStorageError) as locked:
            storage.save_checkpoint(b"while held")
        assert locked.value.stale is False
        assert locked.value.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        assert locked.value.filename == storage.paths.next
        assert os.path.exists(storage.paths.next), (
            "a failed save removed the holder's file"
        )
    finally:
        holder.release()
    assert storage.lock_state() is LockState.STALE
    assert storage.break_stale_lock() is True
    assert storage.lock_state() is LockState.UNLOCKED
    storage.save_checkpoint(b"after the holder")
    assert storage.load_checkpoint() == b"after the holder"


def test_a_lock_held_without_a_next_file_is_held(
    backend: str, filesystem: filesystems.Mount
) -> None:
    # A writer between its flock and its create: nothing on disk shows it yet.
    storage = SessionStorage.create(filesystem.root / f"repo-{backend}")
    holder = Holder(storage.location, create_next=False)
    try:
        assert storage.lock_state() is LockState.HELD
        assert storage.break_stale_lock() is False
    finally:
        holder.release()
    assert storage.lock_state() is LockState.UNLOCKED


def test_a_lock_on_another_session_does_not_count(
    backend: str, filesystem: filesystems.Mount
) -> None:
    storage = SessionStorage.create(filesystem.root / f"repo-{backend}")
    other = SessionStorage.create(filesystem.root / f"repo-{backend}")
    holder = Holder(other.location, create_next=True)
    try:
        assert storage.lock_state() is LockState.UNLOCKED
        leave_next_file(storage)
        assert storage.lock_state() is LockState.STALE
        assert storage.break_stale_lock() is True
    finally:
        holder.release()


def test_a_writer_killed_holding_the_lock_leaves_it_stale(
    backend: str, storage: SessionStorage
) -> None:
    died = subprocess.run(
        [sys.executable, "-I", "-S", "-c", HOLDER, storage.location, "1", "1"],
        check=False,
    )
    assert died.returncode == -signal.SIGKILL
    assert storage.lock_state() is LockState.STALE
    assert storage.break_stale_lock() is True
    storage.save_checkpoint(b"after the dead writer")
    assert storage.load_checkpoint() == b"after the dead writer"


# -- a live writer in a loop ----------------------------------------------------------

_LIVE_SAVES = 300


def test_a_live_writer_is_never_taken_for_a_dead_one(
    storage: SessionStorage, backend: str, backend_env: dict[str, str]
) -> None:
    """Probing and breaking while another process saves never sees STALE.

    Every probe and break lands at a random point of the writer's loop; a probe
    that reads ``session.next`` once, before or after looking at the lock, would
    sometimes take a writer that started or finished in between for a dead one,
    and a break that did not hold the lock would remove its file (its rename
    would then fail).
    """
    writer = subprocess.Popen(
        [
            sys.executable,
            CHILD,
            "saves",
            storage.location,
            str(_LIVE_SAVES),
            "7",
            "4096",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=backend_env,
    )
    assert writer.stdin is not None
    assert writer.stdout is not None
    assert writer.stdout.readline() == f"ready {backend}\n"
    writer.stdin.write("go\n")
    writer.stdin.flush()
    seen: Counter[LockState] = Counter()
    broke = 0
    while writer.poll() is None:
        seen[storage.lock_state()] += 1
        broke += storage.break_stale_lock()
    out, _ = writer.communicate()
    assert writer.returncode == 0
    outcomes = Counter(line.split()[0] for line in out.splitlines())
    locked = {line for line in out.splitlines() if line.startswith("locked")}
    assert locked <= {f"locked {errno.EWOULDBLOCK} False"}
    assert outcomes["ok"] + outcomes["locked"] == _LIVE_SAVES
    assert seen[LockState.STALE] == 0, seen
    assert broke == 0
    assert seen[LockState.HELD] > 0, (
        f"the probe never saw the writer inside a save: {seen}"
    )
    assert outcomes["ok"] > 0
    assert checkpoint_id(storage.load_checkpoint()) is not None


def test_the_python_probe_looks_at_next_on_both_sides_of_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that starts while the probe looks at the lock is not taken as dead.

    The race is too narrow to hit reliably from another process, so a writer is
    made to start exactly there: right after the lock was found free, it takes
    the lock and creates ``session.next``. Reading the file only after the lock
    would call that STALE.
    """
    from sessionstore._fallback import lock

    location = tmp_path / "race.session"
    location.mkdir()
    real_held = lock._held

    def writer_starts_right_after(dir_fd: int, *, next_exists: bool) -> bool:
        held = real_held(dir_fd, next_exists=next_exists)
        (location / "session.next").write_bytes(b"")
        return held

    monkeypatch.setattr(lock, "_held", writer_starts_right_after)
    assert LOCK_STATE_CODES[lock.lock_state(str(location))] is LockState.HELD


def test_the_python_probe_does_not_trust_a_table_that_misses_a_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock table that says "free" beside a ``session.next`` is checked by trying.

    ``/proc/locks`` is read a page at a time, each page at another moment, so
    a long table can miss a writer that holds its lock all along; STALE on that
    word alone would invite breaking a live writer's lock.
    """
    from sessionstore._fallback import lock
    from sessionstore._lock_state import LockTable

    monkeypatch.setattr(lock, "read_lock_table", lambda: LockTable(frozenset()))
    storage = SessionStorage.create(tmp_path)
    holder = Holder(storage.location, create_next=True)
    try:
        assert LOCK_STATE_CODES[lock.lock_state(storage.location)] is LockState.HELD
    finally:
        holder.release()
    assert LOCK_STATE_CODES[lock.lock_state(storage.location)] is LockState.STALE
