"""Who holds a session: real holders in other processes, read from /proc."""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import forked
from holders import held_elsewhere
from sessionstore import (
    LockedStorageError,
    LockState,
    SessionStorage,
    SessionStorageRepository,
)
from sessionstore._lock_holder import (
    Credentials,
    LockHolder,
    describe_holder,
    format_command,
    may_write_directory,
    owner_candidates,
    parse_boot_time,
    parse_cmdline,
    parse_credentials,
    parse_proc_stat,
)
from sessionstore._lock_state import FileKey, parse_lock_owners

UTC = datetime.timezone.utc
# The marker every holder started here carries on its command line.
MARKER = "sessionstore-test-holder"

# Takes the directory's flock, passes the descriptor to a child that lives on,
# and exits: the lock table keeps naming the exited process's pid.
LOCK_AND_LEAVE = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
os.set_inheritable(fd, True)
child = os.fork()
if child == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.execv("/bin/sleep", ["sleep", "600"])
print(child, flush=True)
"""

# Makes a process (sleep) with exactly the pid given, with clone3's set_tid:
# no waiting for the pid counter to wrap, and no race with other processes
# (the kernel refuses with EEXIST if the pid is taken).
SPAWN_WITH_PID = """
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
tid = (ctypes.c_int32 * 1)(int(sys.argv[1]))
args = struct.pack("11Q", 0, 0, 0, 0, 17, 0, 0, 0, ctypes.addressof(tid), 1, 0)
buf = ctypes.create_string_buffer(args, len(args))
pid = libc.syscall(435, buf, ctypes.c_size_t(len(args)))
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.execv("/bin/sleep", ["sleep", "600"])
if pid < 0:
    sys.exit(os.strerror(ctypes.get_errno()))
print(pid, flush=True)
"""


@pytest.fixture
def holder(
    backend: str, tmp_path: Path
) -> Iterator[tuple[SessionStorage, subprocess.Popen[str], datetime.datetime]]:
    """A session another process holds through ``hold()``; when it started."""
    storage = SessionStorage.create(tmp_path)
    before = datetime.datetime.now(UTC).replace(microsecond=0)
    with held_elsewhere(storage.location, MARKER) as process:
        yield storage, process, before


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_a_holder_in_another_process_is_named(
    holder: tuple[SessionStorage, subprocess.Popen[str], datetime.datetime],
) -> None:
    storage, process, before = holder
    found = storage.holder()
    assert isinstance(found, LockHolder)
    assert found.pid == process.pid
    assert found.command[-2:] == (storage.location, MARKER)
    assert found.command[0] == sys.executable
    # To the second (the boot time is kept in seconds), and not after now.
    after = datetime.datetime.now(UTC)
    assert before - datetime.timedelta(seconds=2) <= found.started <= after
    assert storage.lock_state() is LockState.HELD
    (info,) = SessionStorageRepository(os.path.dirname(storage.location)).scan()
    assert info.holder == found


def test_a_save_into_a_held_session_names_the_holder(
    holder: tuple[SessionStorage, subprocess.Popen[str], datetime.datetime],
) -> None:
    storage, process, _ = holder
    with pytest.raises(LockedStorageError) as raised:
        storage.save_checkpoint(b"two")
    error = raised.value
    assert error.errno == errno.EWOULDBLOCK
    assert error.holder is not None
    assert error.holder.pid == process.pid
    assert error.holder.command[:2] == (sys.executable, "-c")
    # The message names it as describe() does (a long command is shortened).
    assert f"held by {error.holder.describe()}" in str(error)
    # The holder survives a trip through pickle, message and all.
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.holder, str(copy)) == (error.holder, str(error))


def test_a_writer_of_the_same_user_may_write_the_session(
    holder: tuple[SessionStorage, subprocess.Popen[str], datetime.datetime],
) -> None:
    storage, _, _ = holder
    found = storage.holder()
    assert found is not None
    assert found.can_write is True
    with pytest.raises(LockedStorageError) as raised:
        storage.save_checkpoint(b"two")
    assert "may not write" not in str(raised.value)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
@pytest.mark.skipif(
    shutil.which("setpriv") is None or shutil.which("flock") is None,
    reason="setpriv and flock (util-linux) are not installed",
)
def test_another_users_lock_on_a_readable_session_is_named_a_denial(
    backend: str,
) -> None:
    """plainbox makes its session directories 0755: any user may open one and
    take its flock. The refusal then says that the holder is no writer, and
    how to prevent it."""
    with forked.shared_directory() as base:
        storage = SessionStorage.create(base)
        storage.save_checkpoint(b"one")
        os.chmod(storage.location, 0o755)
        denier = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={forked.NOBODY}",
                f"--regid={forked.NOBODY}",
                "--clear-groups",
                "flock",
                "--exclusive",
                storage.location,
                "sh",
                "-c",
                f"echo locked; exec sleep 600 # {MARKER}",
            ],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert denier.stdout is not None
            assert denier.stdout.readline() == "locked\n"
            with pytest.raises(LockedStorageError) as raised:
                storage.save_checkpoint(b"two")
            error = raised.value
            assert error.holder is not None
            assert error.holder.can_write is False
            assert "may not write this session" in str(error)
            assert "chmod go-r" in str(error)
            assert storage.load_checkpoint() == b"one"
        finally:
            # flock's child (the shell, then sleep) shares its descriptor.
            os.killpg(denier.pid, signal.SIGKILL)
            denier.wait()
        # The lock goes with the last of the group, which may die a moment later.
        deadline = time.monotonic() + 30
        while storage.lock_state() is not LockState.UNLOCKED:
            assert time.monotonic() < deadline, "the denier's lock outlived it"
            time.sleep(0.01)
        storage.save_checkpoint(b"two")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_no_other_user_can_take_the_lock_of_a_session_the_library_made(
    backend: str,
) -> None:
    with forked.shared_directory() as base:
        storage = SessionStorage.create(base)

        def lock() -> str:
            try:
                fd = os.open(storage.location, os.O_RDONLY | os.O_DIRECTORY)
            except PermissionError:
                return "refused"
            return "opened" if fd >= 0 else "?"

        assert forked.as_nobody(lock) == "refused"


@given(
    uid=st.integers(0, 5),
    groups=st.frozensets(st.integers(0, 5)),
    mode=st.integers(0, 0o777),
    owner=st.integers(0, 5),
    group=st.integers(0, 5),
)
def test_write_permission_is_decided_by_the_bits_of_the_closest_class(
    uid: int, groups: frozenset[int], mode: int, owner: int, group: int
) -> None:
    allowed = may_write_directory(Credentials(uid, groups), mode, owner, group)
    if uid == 0:
        assert allowed
    elif uid == owner:
        assert allowed == (mode & 0o300 == 0o300)
    elif group in groups:
        assert allowed == (mode & 0o030 == 0o030)
    else:
        assert allowed == (mode & 0o003 == 0o003)


def test_credentials_are_the_filesystem_ids_and_the_groups() -> None:
    status = (
        "Name:\tsh\nUid:\t1000\t1001\t1002\t1003\n"
        "Gid:\t20\t21\t22\t23\nGroups:\t4 27 \n"
    )
    assert parse_credentials(status) == Credentials(1003, frozenset({23, 4, 27}))
    assert parse_credentials("Name:\tsh\n") is None


def test_a_holder_that_exits_holds_nothing(
    holder: tuple[SessionStorage, subprocess.Popen[str], datetime.datetime],
) -> None:
    storage, process, _ = holder
    assert storage.holder() is not None
    process.communicate("", timeout=60)
    assert storage.holder() is None
    assert storage.lock_state() is LockState.UNLOCKED


def test_unlocked_and_stale_sessions_have_no_holder(
    backend: str, tmp_path: Path
) -> None:
    storage = SessionStorage.create(tmp_path)
    assert storage.holder() is None
    Path(storage.location, "session.next").write_bytes(b"")
    assert storage.lock_state() is LockState.STALE
    assert storage.holder() is None
    with pytest.raises(FileNotFoundError):
        SessionStorage(str(tmp_path / "gone")).holder()


def test_this_process_can_be_the_holder(backend: str, tmp_path: Path) -> None:
    storage = SessionStorage.create(tmp_path)
    with storage.hold():
        found = storage.holder()
    assert found is not None
    assert found.pid == os.getpid()
    assert storage.holder() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="a new pid namespace needs root")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not installed")
def test_a_holder_outside_this_pid_namespace_is_not_named(
    holder: tuple[SessionStorage, subprocess.Popen[str], datetime.datetime],
    backend_env: dict[str, str],
) -> None:
    """The kernel leaves a lock whose owner this namespace cannot see out of
    /proc/locks: from inside a new pid namespace, no holder is named."""
    storage, _, _ = holder
    look = (
        "import sys, sessionstore\n"
        "print(sessionstore.SessionStorage(sys.argv[1]).holder())\n"
    )
    inside = subprocess.run(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            "-c",
            look,
            storage.location,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=backend_env,
    )
    if inside.returncode != 0 and "unshare failed" in inside.stderr:
        pytest.skip(f"cannot make a pid namespace here: {inside.stderr.strip()}")
    assert (inside.returncode, inside.stdout) == (0, "None\n"), inside.stderr
    assert storage.holder() is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="clone3 with set_tid needs root")
def test_a_reused_pid_is_not_taken_for_the_holder(backend: str, tmp_path: Path) -> None:
    """The lock outlives the process that took it; its pid goes to another one.

    Only the initial pid namespace shows a lock whose taker is gone (in any
    other, the kernel leaves the line out), so the pid is reused there.
    """
    storage = SessionStorage.create(tmp_path)
    taker = subprocess.run(
        [sys.executable, "-c", LOCK_AND_LEAVE, storage.location],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    heir = int(taker.stdout)
    impostor = None
    try:
        taker_pid = _pid_of_lock(storage)
        assert taker_pid is not None
        assert taker_pid != heir
        assert storage.lock_state() is LockState.HELD
        assert storage.holder() is None  # the taker is gone
        spawned = subprocess.run(
            [sys.executable, "-c", SPAWN_WITH_PID, str(taker_pid)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if spawned.returncode != 0:
            pytest.skip(f"clone3 with set_tid refused: {spawned.stderr.strip()}")
        impostor = int(spawned.stdout)
        assert impostor == taker_pid
        # The child execs sleep after its pid was printed: wait for the exec.
        deadline = time.monotonic() + 30
        while not Path(f"/proc/{impostor}/cmdline").read_bytes().startswith(b"sleep\0"):
            assert time.monotonic() < deadline, "the impostor never ran sleep"
            time.sleep(0.01)
        assert _pid_of_lock(storage) == impostor
        assert storage.lock_state() is LockState.HELD
        assert storage.holder() is None
    finally:
        _kill(heir)
        if impostor is not None:
            _kill(impostor)
    deadline = time.monotonic() + 30
    while storage.lock_state() is LockState.HELD and time.monotonic() < deadline:
        time.sleep(0.01)
    assert storage.lock_state() is LockState.UNLOCKED


def _pid_of_lock(storage: SessionStorage) -> int | None:
    st_ = os.stat(storage.location)
    key = FileKey(os.major(st_.st_dev), os.minor(st_.st_dev), st_.st_ino)
    owners = parse_lock_owners(Path("/proc/locks").read_text())
    (pid,) = owners.get(key, frozenset({None}))
    return pid


# The pure half.


def test_the_lock_table_names_owners_and_skips_waiters() -> None:
    text = (
        "1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF\n"
        "1: -> FLOCK  ADVISORY  WRITE 99 fd:00:5678 0 EOF\n"
        "2: POSIX  ADVISORY  WRITE 12 08:01:77 0 EOF\n"
        "3: FLOCK  ADVISORY  WRITE x 08:01:78 0 EOF\n"
        "4: FLOCK  ADVISORY  READ 6 00:2a:42 0 EOF\n"
        "5: FLOCK  ADVISORY  READ 7 00:2a:42 0 EOF\n"
    )
    assert parse_lock_owners(text) == {
        FileKey(0xFD, 0, 5678): frozenset({1234}),
        FileKey(0, 0x2A, 42): frozenset({6, 7}),
    }


def test_owners_on_the_inode_alone_come_after_the_sure_ones() -> None:
    key = FileKey(0, 40, 7)
    owners = {
        FileKey(0, 41, 7): frozenset({3}),
        key: frozenset({9, 5}),
        FileKey(0, 40, 8): frozenset({1}),
    }
    assert owner_candidates(owners, key) == ((5, True), (9, True), (3, False))
    assert owner_candidates({}, key) == ()


@given(
    name=st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=20),
    ticks=st.integers(0, 2**62),
)
def test_the_stat_line_is_read_past_any_process_name(name: str, ticks: int) -> None:
    fields = ["S", "1", *[str(i) for i in range(5, 22)], str(ticks), "0", "1"]
    text = f"42 ({name}) " + " ".join(fields) + "\n"
    found = parse_proc_stat(text)
    assert found is not None
    assert (found.name, found.start_ticks) == (name, ticks)


def test_a_stat_line_that_does_not_parse_is_none() -> None:
    assert parse_proc_stat("") is None
    assert parse_proc_stat("42 (x) S 1 2") is None
    assert parse_boot_time("cpu 1 2\nbtime 1700000000\n") == 1700000000
    assert parse_boot_time("cpu 1 2\n") is None


def test_a_command_line_is_split_and_a_kernel_thread_bracketed() -> None:
    assert parse_cmdline(b"checkbox-cli\0run\0x\0", "checkbox-cli") == (
        "checkbox-cli",
        "run",
        "x",
    )
    assert parse_cmdline(b"", "kworker/0:1") == ("[kworker/0:1]",)
    assert parse_cmdline(b"a\xff\0", "a") == ("a\udcff",)


def test_a_long_command_is_cut_with_an_ellipsis() -> None:
    assert format_command(["checkbox-cli", "run"]) == "checkbox-cli run"
    cut = format_command(["x" * 30, "y" * 30], width=40)
    assert len(cut) == 40
    assert cut.endswith("…")


def test_the_holder_reads_as_the_command_line_prints_it() -> None:
    started = datetime.datetime(2026, 3, 1, 12, 3, 41, tzinfo=UTC)
    holder = LockHolder(4242, ("checkbox-cli", "run", "plan"), started, 100)
    same_day = started + datetime.timedelta(hours=3)
    assert describe_holder(holder, same_day) == (
        "pid 4242 (checkbox-cli run plan) since 12:03:41 UTC"
    )
    assert describe_holder(holder, same_day + datetime.timedelta(days=1)) == (
        "pid 4242 (checkbox-cli run plan) since 2026-03-01 12:03:41 UTC"
    )
