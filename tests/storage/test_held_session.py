"""storage.hold(): a session held open and locked across saves, on both backends.

The lock is held from ``hold()`` to ``close()`` and never longer; every save is
the same atomic, durable save as ``save_checkpoint``'s, on the same files, and
leaves the same bytes; a failed save leaves the session held and saving on;
threads take turns, a forked child holds nothing, and a signal handler may
close the session or fork. The held plans' syscalls are checked in
``tests/backends/test_held_conformance.py``.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Final

import pytest

from sessionstore import (
    HeldSession,
    Layout,
    LockedStorageError,
    LockState,
    SessionStorage,
    SessionStorageRepository,
)


@pytest.fixture(params=list(Layout), ids=lambda layout: layout.name.lower())
def layout_storage(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> SessionStorage:
    layout: Layout = request.param
    return SessionStorage.create(tmp_path / "repo", layout=layout)


def test_held_saves_load_like_any_other(layout_storage: SessionStorage) -> None:
    checkpoints = [b"", b"one", os.urandom(70_000), b"two" * 10, b"three"]
    with layout_storage.hold() as held:
        for data in checkpoints:
            held.save_checkpoint(data)
            assert layout_storage.load_checkpoint() == data
            assert held.load_checkpoint() == data
    if layout_storage.layout is Layout.SLOTTED:
        assert layout_storage.load_previous() == checkpoints[-2]
        assert sorted(os.listdir(layout_storage.location)) == ["session.slots"]
    else:
        assert sorted(os.listdir(layout_storage.location)) == ["session"]


def test_bytearray_and_memoryview_are_saved_and_other_data_refused(
    layout_storage: SessionStorage,
) -> None:
    with layout_storage.hold() as held:
        held.save_checkpoint(bytearray(b"array"))
        assert layout_storage.load_checkpoint() == b"array"
        held.save_checkpoint(memoryview(b"xviewx")[1:-1])
        assert layout_storage.load_checkpoint() == b"view"
        with pytest.raises(TypeError):
            held.save_checkpoint("text")  # type: ignore[arg-type]
        assert layout_storage.load_checkpoint() == b"view"


def test_the_lock_is_held_from_hold_to_close(layout_storage: SessionStorage) -> None:
    other = SessionStorage(layout_storage.location, layout=layout_storage.layout)
    layout_storage.save_checkpoint(b"before")
    held = layout_storage.hold()
    assert layout_storage.lock_state() is LockState.HELD
    with pytest.raises(LockedStorageError) as raised:
        other.save_checkpoint(b"elsewhere")
    assert raised.value.errno == errno.EWOULDBLOCK
    assert raised.value.stale is False
    assert raised.value.filename == layout_storage.paths.next
    with pytest.raises(LockedStorageError):
        other.hold()
    assert layout_storage.break_stale_lock() is False
    assert other.load_checkpoint() == b"before"

    held.close()
    assert held.closed
    assert layout_storage.lock_state() is LockState.UNLOCKED
    other.save_checkpoint(b"after")
    assert layout_storage.load_checkpoint() == b"after"


def test_close_is_idempotent_and_a_closed_session_refuses_saves(
    layout_storage: SessionStorage,
) -> None:
    held = layout_storage.hold()
    held.save_checkpoint(b"kept")
    held.close()
    held.close()
    with pytest.raises(ValueError, match=layout_storage.location):
        held.save_checkpoint(b"too late")
    assert layout_storage.load_checkpoint() == b"kept"
    assert "closed" in repr(held)


def test_a_held_session_left_to_the_collector_releases_its_lock(
    layout_storage: SessionStorage,
) -> None:
    held = layout_storage.hold()
    held.save_checkpoint(b"saved")
    assert layout_storage.lock_state() is LockState.HELD
    del held
    gc.collect()
    assert layout_storage.lock_state() is LockState.UNLOCKED
    assert layout_storage.load_checkpoint() == b"saved"


def test_hold_refuses_what_a_save_refuses(backend: str, tmp_path: Path) -> None:
    missing = SessionStorage(str(tmp_path / "missing.session"))
    with pytest.raises(FileNotFoundError) as gone:
        missing.hold()
    assert gone.value.filename == missing.location

    leftover = SessionStorage.create(tmp_path, layout=Layout.SLOTTED)
    Path(leftover.paths.next).write_bytes(b"")
    for layout in Layout:
        with pytest.raises(LockedStorageError) as locked:
            SessionStorage(leftover.location, layout=layout).hold()
        assert locked.value.errno == errno.EEXIST
        assert locked.value.stale is True
        assert locked.value.filename == leftover.paths.next
    assert leftover.lock_state() is LockState.STALE

    replace = SessionStorage.create(tmp_path)
    replace.save_checkpoint(b"replace layout")
    with pytest.raises(FileExistsError) as exists:
        SessionStorage(replace.location, layout=Layout.SLOTTED).hold()
    assert exists.value.filename == replace.paths.checkpoint
    assert replace.lock_state() is LockState.UNLOCKED


def test_a_growing_record_rebuilds_and_later_saves_go_in_place_again(
    backend: str, tmp_path: Path
) -> None:
    storage = SessionStorage.create(tmp_path, layout=Layout.SLOTTED)
    with storage.hold() as held:
        held.save_checkpoint(b"small")
        before = os.stat(storage.paths.slots).st_ino
        held.save_checkpoint(b"big" * 100_000)
        rebuilt = os.stat(storage.paths.slots).st_ino
        held.save_checkpoint(b"in place")
        held.save_checkpoint(b"in place again")
        assert os.stat(storage.paths.slots).st_ino == rebuilt != before
        assert storage.load_checkpoint() == b"in place again"
        assert storage.load_previous() == b"in place"


def test_prune_spares_a_held_session(backend: str, tmp_path: Path) -> None:
    repo = SessionStorageRepository(str(tmp_path))
    storage = SessionStorage.create(tmp_path, layout=Layout.SLOTTED)
    with storage.hold() as held:
        held.save_checkpoint(b"busy")
        assert repo.prune(keep=0) == []
        assert os.path.isdir(storage.location)
    assert [info.location for info in repo.prune(keep=0)] == [storage.location]


def test_threads_sharing_a_held_session_take_turns(
    layout_storage: SessionStorage,
) -> None:
    saved = [f"{thread}-{n}".encode() * 50 for thread in range(4) for n in range(40)]
    errors: list[BaseException] = []
    with layout_storage.hold() as held:

        def save(start: int) -> None:
            try:
                for data in saved[start : start + 40]:
                    held.save_checkpoint(data)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=save, args=(i * 40,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert layout_storage.load_checkpoint() in saved
    if layout_storage.layout is Layout.SLOTTED:
        assert layout_storage.load_previous() in saved


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_hold_the_parents_session(
    layout_storage: SessionStorage,
) -> None:
    held = layout_storage.hold()
    held.save_checkpoint(b"parent")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read_end)
        try:
            held.save_checkpoint(b"child")
            report = "saved"
        except ValueError as exc:
            report = str(exc)
        os.write(write_end, report.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(pid, 0)
    assert "not to this fork" in report
    assert layout_storage.lock_state() is LockState.HELD
    held.save_checkpoint(b"parent again")
    held.close()
    assert layout_storage.lock_state() is LockState.UNLOCKED
    assert layout_storage.load_checkpoint() == b"parent again"


_FAULT_CHILD: Final = """
import json, sys
from sessionstore import Layout, SessionStorage
storage = SessionStorage(sys.argv[1], layout=Layout.SLOTTED)
report = {}
with storage.hold() as held:
    held.save_checkpoint(b"first")
    try:
        held.save_checkpoint(b"second")
        report["raised"] = None
    except OSError as exc:
        report.update(raised=type(exc).__name__, errno=exc.errno, filename=exc.filename)
    report["after_failure"] = storage.load_checkpoint().decode()
    held.save_checkpoint(b"third")
    report["after_retry"] = storage.load_checkpoint().decode()
    report["previous"] = storage.load_previous().decode()
print(json.dumps(report))
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_failed_flush_hides_the_record_and_the_held_session_saves_on(
    backend: str, backend_env: dict[str, str], tmp_path: Path
) -> None:
    storage = SessionStorage.create(tmp_path, layout=Layout.SLOTTED)
    storage.save_checkpoint(b"zeroth")
    # The second fdatasync of the slots file fails: the held session's second save.
    command = [
        "strace", "-qq", "-f", "-o", "/dev/null", "-P", storage.paths.slots,
        "-e", "trace=fdatasync", "-e", "inject=fdatasync:error=EIO:when=2",
        sys.executable, "-c", _FAULT_CHILD, storage.location,
    ]  # fmt: skip
    done = subprocess.run(
        command, env=backend_env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {
        "raised": "OSError",
        "errno": errno.EIO,
        "filename": storage.paths.slots,
        "after_failure": "first",
        "after_retry": "third",
        "previous": "first",
    }
    assert storage.lock_state() is LockState.UNLOCKED


def test_hold_returns_a_held_session(layout_storage: SessionStorage) -> None:
    with layout_storage.hold() as held:
        assert isinstance(held, HeldSession)
        assert held.storage == layout_storage
        assert not held.closed


def test_held_saves_leave_the_bytes_one_shot_saves_leave(
    backend: str, tmp_path: Path
) -> None:
    """A held session chooses each slot from what it wrote; one-shot saves read
    the file each time: the same choices, so the same file, byte for byte."""
    checkpoints = [b"a", b"bb" * 3000, b"c", b"d" * 100_000, b"e", b"f" * 99_000, b""]
    one_shot = SessionStorage.create(tmp_path / "one-shot", layout=Layout.SLOTTED)
    held = SessionStorage.create(tmp_path / "held", layout=Layout.SLOTTED)
    with held.hold() as session:
        for data in checkpoints:
            one_shot.save_checkpoint(data)
            session.save_checkpoint(data)
            assert Path(held.paths.slots).read_bytes() == (
                Path(one_shot.paths.slots).read_bytes()
            )


def test_a_buffer_changed_during_held_saves_never_tears_a_record(
    backend: str, tmp_path: Path
) -> None:
    """Another thread rewrites the bytearray while it is being saved: each save
    writes the buffer as it was when the call began, so both generations stay
    whole (a torn newest record would make the next save overwrite the only
    whole one)."""
    storage = SessionStorage.create(tmp_path, layout=Layout.SLOTTED)
    size = 1 << 20
    buffer = bytearray(size)
    stop = threading.Event()

    def rewrite() -> None:
        value = 0
        while not stop.is_set():
            value = (value + 1) % 256
            buffer[:] = bytes([value]) * size

    rewriter = threading.Thread(target=rewrite)
    rewriter.start()
    try:
        with storage.hold() as held:
            for _ in range(100):
                held.save_checkpoint(buffer)
    finally:
        stop.set()
        rewriter.join()
    for data in (storage.load_checkpoint(), storage.load_previous()):
        assert data is not None
        assert len(data) == size
        assert data == bytes([data[0]]) * size


def test_a_save_after_the_session_was_removed_raises(
    layout_storage: SessionStorage,
) -> None:
    with layout_storage.hold() as held:
        held.save_checkpoint(b"before")
        held.save_checkpoint(b"known")
        layout_storage.remove()
        with pytest.raises(FileNotFoundError) as gone:
            held.save_checkpoint(b"into nothing")
    # The slotted layout finds its directory unlinked; the replace layout
    # cannot create session.next in it.
    named = {
        Layout.SLOTTED: layout_storage.location,
        Layout.REPLACE: layout_storage.paths.next,
    }
    assert gone.value.filename == named[layout_storage.layout]
    assert not os.path.exists(layout_storage.location)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_during_saves_leaves_the_lock_with_the_parent_alone(
    layout_storage: SessionStorage,
) -> None:
    """A thread saves in a loop while the main thread forks: the fork waits for
    the save in flight, so the child holds none of the session's files, and
    the parent's close() releases the lock while the child still runs."""
    held = layout_storage.hold()
    stop = threading.Event()

    def save_forever() -> None:
        while not stop.is_set():
            held.save_checkpoint(b"saved by a thread " * 100)

    saver = threading.Thread(target=save_forever)
    saver.start()
    read_end, write_end = os.pipe()
    go_end, wait_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            os.close(read_end)
            location = os.path.realpath(layout_storage.location)
            open_files = [
                os.path.realpath(f"/proc/self/fd/{fd}")
                for fd in os.listdir("/proc/self/fd")
            ]
            mine = [path for path in open_files if path.startswith(location)]
            os.write(write_end, json.dumps(mine).encode())
            os.close(write_end)
            os.read(go_end, 1)  # alive until the parent has checked the lock
            os._exit(0)
    finally:
        stop.set()
        saver.join()
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        inherited = json.loads(pipe.read())
    held.close()
    try:
        assert inherited == []
        assert layout_storage.lock_state() is LockState.UNLOCKED
    finally:
        os.write(wait_end, b"x")
        os.waitpid(pid, 0)


def test_a_closed_session_names_its_location_as_the_file_system_spells_it(
    backend: str, tmp_path: Path
) -> None:
    base = tmp_path / os.fsdecode(b"caf\xe9")
    storage = SessionStorage.create(base, layout=Layout.SLOTTED)
    held = storage.hold()
    held.close()
    with pytest.raises(ValueError) as closed:
        held.save_checkpoint(b"x")
    assert str(closed.value) == f"held session {storage.location} is closed"


_SIGNAL_CHILD: Final = """
import os, signal, sys
from sessionstore import Layout, LockState, SessionStorage
storage = SessionStorage(sys.argv[1], layout=Layout[sys.argv[2]])
action = sys.argv[3]
held = storage.hold()
forks = []
ticks = 0

def handler(signum, frame):
    global ticks
    ticks += 1
    if action == "close":
        # Not the first: saves run between the signals before this one.
        if ticks == 5:
            held.close()
    else:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        forks.append(pid)
    # Armed again once this handler is done: a timer firing at a fixed
    # interval shorter than a fork would nest handlers in handlers without end,
    # in any program.
    signal.setitimer(signal.ITIMER_REAL, 0.001)

signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.001)
saves = 0
try:
    while not held.closed and (action == "close" or len(forks) < 20):
        held.save_checkpoint(b"saved under signals " * 50)
        saves += 1
except ValueError:
    pass  # closed by the handler between the check and the save
signal.signal(signal.SIGALRM, signal.SIG_IGN)  # a handler may have re-armed it
signal.setitimer(signal.ITIMER_REAL, 0)
for pid in forks:
    os.waitpid(pid, 0)
held.close()
print(saves, len(forks), storage.lock_state().value)
"""


@pytest.mark.parametrize("action", ["close", "fork"])
def test_a_signal_handler_may_close_or_fork_during_held_saves(
    layout_storage: SessionStorage, backend_env: dict[str, str], action: str
) -> None:
    """A SIGALRM a millisecond after the last one was handled, while the main
    thread saves: a handler that closes the session, or forks, neither hangs
    nor leaves the lock held."""
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_CHILD, layout_storage.location,
         layout_storage.layout.name, action],
        env=backend_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    saves, forks, lock = done.stdout.split()
    assert lock == LockState.UNLOCKED.value
    assert int(saves) > 0
    if action == "fork":
        assert int(forks) >= 20
    assert layout_storage.load_checkpoint() == b"saved under signals " * 50
