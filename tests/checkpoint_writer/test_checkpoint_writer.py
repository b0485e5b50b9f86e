"""CheckpointWriter: background, coalescing, durable saves, on both writer backends.

Tests that need a save to block or fail at a chosen moment replace the active
backend's ``save`` with an instrumented one; such a save is a Python callable,
so those tests run the writer's threading worker in front of either backend's
save. Everything else runs against the real disk.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

import filesystems
from sessionstore import (
    CheckpointWriter,
    Durability,
    Layout,
    LockedStorageError,
    LockState,
    SessionStorage,
    _backend,
)
from sessionstore._fallback.checkpoint_worker import CheckpointWorker
from sessionstore._shield import shielded

OLD = b"the last good checkpoint"
MiB = 1024 * 1024
# How long a test waits for the worker before it calls the worker stuck.
PATIENCE = 30.0


def wait_for_saves(writer: CheckpointWriter, count: int) -> None:
    """Wait until ``count`` saves ran, without taking any error they raised."""
    deadline = time.monotonic() + PATIENCE
    while writer.saves < count:
        assert time.monotonic() < deadline, f"{writer.saves} saves, expected {count}"
        time.sleep(0.001)


@attrs.define
class GatedSave:
    """A backend save that holds its first call until ``release`` is set.

    ``entered`` is set once the first call started; ``error``, when given, is
    raised by that first call after its release instead of saving.
    """

    real: Callable[[str, bytes | bytearray | memoryview, bytes, str, str], None]
    error: OSError | None = None
    entered: threading.Event = attrs.Factory(threading.Event)
    release: threading.Event = attrs.Factory(threading.Event)
    calls: list[bytes] = attrs.Factory(list)

    def __call__(
        self,
        location: str,
        data: bytes | bytearray | memoryview,
        codes: bytes,
        next_name: str,
        target: str,
    ) -> None:
        self.calls.append(bytes(data))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(PATIENCE), "the test never released the save"
            if self.error is not None:
                raise self.error
        self.real(location, data, codes, next_name, target)


@pytest.fixture
def gated(backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedSave]:
    """The active backend with its first save held at a gate the test opens."""
    current = _backend.active.current
    gate = GatedSave(current.save)

    class GatedWorker(CheckpointWorker):
        """The threaded worker, which (unlike the native one) saves through it."""

        def __init__(self, location: str, codes: bytes, next_name: str, target: str):
            def save_one(data: bytes) -> None:
                shielded(gate, location, data, codes, next_name, target)

            super().__init__(location, codes, next_name, target, save_one=save_one)

    gated = attrs.evolve(current, save=gate, CheckpointWorker=GatedWorker)
    monkeypatch.setattr(_backend.active, "current", gated)
    yield gate
    gate.release.set()


@pytest.fixture
def saved(storage: SessionStorage) -> SessionStorage:
    """A storage holding the checkpoint ``OLD``."""
    storage.save_checkpoint(OLD)
    return storage


@pytest.mark.parametrize("durability", list(Durability))
def test_flush_makes_the_submitted_checkpoint_loadable(
    backend: str, tmp_path: Path, durability: Durability
) -> None:
    storage = SessionStorage.create(tmp_path, durability=durability)
    writer = CheckpointWriter(storage)
    writer.submit(b"after the first job")
    writer.flush()
    assert storage.load_checkpoint() == b"after the first job"
    assert writer.saves == 1
    writer.close()
    assert os.listdir(storage.location) == ["session"]


def test_a_slotted_storage_is_saved_through_its_layout(
    backend: str, tmp_path: Path
) -> None:
    storage = SessionStorage.create(tmp_path, layout=Layout.SLOTTED)
    with storage.writer() as writer:
        writer.submit(b"first")
        writer.flush()
        writer.submit(b"second")
    assert os.listdir(storage.location) == ["session.slots"]
    assert storage.load_checkpoint() == b"second"
    assert storage.load_previous() == b"first"


def test_storage_writer_saves_to_that_storage(storage: SessionStorage) -> None:
    with storage.writer() as writer:
        assert isinstance(writer, CheckpointWriter)
        assert writer.storage == storage
        writer.submit(b"through storage.writer()")
    assert storage.load_checkpoint() == b"through storage.writer()"


def test_a_location_no_save_can_name_is_refused_at_once(
    backend: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="null byte"):
        SessionStorage(f"{tmp_path}/a\0b.session").writer()


def test_the_last_of_1000_submissions_is_loaded_after_flush(
    storage: SessionStorage,
) -> None:
    with storage.writer() as writer:
        for number in range(1000):
            writer.submit(b"checkpoint %d" % number)
        writer.flush()
        assert storage.load_checkpoint() == b"checkpoint 999"
        assert 1 <= writer.saves <= 1000


def test_submissions_during_a_save_coalesce_into_one_save(
    saved: SessionStorage, gated: GatedSave
) -> None:
    with saved.writer() as writer:
        writer.submit(b"checkpoint 0")
        assert gated.entered.wait(PATIENCE)
        for number in range(1, 1000):
            writer.submit(b"checkpoint %d" % number)
        assert saved.load_checkpoint() == OLD
        gated.release.set()
        writer.flush()
        assert saved.load_checkpoint() == b"checkpoint 999"
        assert writer.saves == 2
    assert gated.calls == [b"checkpoint 0", b"checkpoint 999"]


def test_a_big_checkpoint_coalesces_on_the_real_disk(storage: SessionStorage) -> None:
    # Each submission copies 1 MiB while each save writes and flushes it: saves
    # cannot keep up, so most submissions are superseded before their turn.
    buffer = bytearray(MiB)
    with storage.writer() as writer:
        for number in range(1000):
            buffer[:8] = number.to_bytes(8, "big")
            writer.submit(buffer)
        writer.flush()
        assert storage.load_checkpoint()[:8] == (999).to_bytes(8, "big")
        assert writer.saves < 1000


def test_flush_with_nothing_pending_returns_at_once(storage: SessionStorage) -> None:
    with storage.writer() as writer:
        writer.flush()
        writer.flush()
        assert writer.saves == 0
        writer.submit(b"once")
        writer.flush()
        writer.flush()
        assert writer.saves == 1
    assert storage.load_checkpoint() == b"once"


def test_a_reused_buffer_does_not_change_a_submitted_checkpoint(
    storage: SessionStorage,
) -> None:
    buffer = bytearray(b"A" * 4096)
    view = memoryview(bytearray(b"V" * 4096))
    with storage.writer() as writer:
        writer.submit(buffer)
        buffer[:] = b"B" * 4096
        writer.flush()
        assert storage.load_checkpoint() == b"A" * 4096
        writer.submit(view)
        view[:] = b"W" * 4096
    assert storage.load_checkpoint() == b"V" * 4096


def test_a_reused_buffer_waiting_behind_a_save_is_not_torn(
    saved: SessionStorage, gated: GatedSave
) -> None:
    buffer = bytearray(b"A" * 4096)
    with saved.writer() as writer:
        writer.submit(b"first")
        assert gated.entered.wait(PATIENCE)
        writer.submit(buffer)
        buffer[:2048] = b"B" * 2048
        gated.release.set()
    assert saved.load_checkpoint() == b"A" * 4096


@pytest.mark.parametrize(
    "data", ["text", 42, None, [b"x"], memoryview(b"abcd")[::2]], ids=repr
)
def test_non_bytes_data_raises_type_error_and_is_not_taken(
    saved: SessionStorage, data: object
) -> None:
    with saved.writer() as writer:
        with pytest.raises(TypeError):
            writer.submit(data)  # type: ignore[arg-type]
        writer.flush()
        assert writer.saves == 0
    assert saved.load_checkpoint() == OLD


def test_a_memoryview_of_wide_items_is_saved_as_its_bytes(
    storage: SessionStorage,
) -> None:
    import array

    numbers = array.array("I", [1, 2, 3])
    with storage.writer() as writer:
        writer.submit(memoryview(numbers))
    assert storage.load_checkpoint() == numbers.tobytes()


def test_close_flushes_and_is_idempotent(storage: SessionStorage) -> None:
    writer = storage.writer()
    writer.submit(b"closing")
    assert not writer.closed
    writer.close()
    assert writer.closed
    assert storage.load_checkpoint() == b"closing"
    writer.close()
    writer.flush()
    assert writer.saves == 1


def os_threads() -> int:
    """How many threads this process runs, Python's or not."""
    return len(os.listdir("/proc/self/task"))


def test_close_stops_the_worker_thread(storage: SessionStorage) -> None:
    before = os_threads()
    writer = storage.writer()
    assert os_threads() == before + 1
    writer.submit(b"x")
    writer.close()
    deadline = time.monotonic() + PATIENCE
    # The thread has said it is done; the kernel reaps it a moment later.
    while os_threads() > before:
        assert time.monotonic() < deadline, "the worker thread outlived close()"
        time.sleep(0.001)


@pytest.mark.parametrize("layout", list(Layout))
def test_the_native_worker_is_not_a_python_thread(
    backend: str, tmp_path: Path, layout: Layout
) -> None:
    storage = SessionStorage.create(tmp_path, layout=layout)
    before = set(threading.enumerate())
    with storage.writer() as writer:
        python_threads = set(threading.enumerate()) - before
        writer.submit(b"x")
    assert len(python_threads) == (0 if backend == "native" else 1)


@pytest.mark.parametrize("layout", list(Layout))
def test_the_native_worker_saves_while_the_caller_holds_the_gil(
    native: _backend.Backend,
    tmp_path: Path,
    layout: Layout,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the native worker can: the threading one needs the GIL between calls.
    monkeypatch.setattr(_backend.active, "current", native)
    storage = SessionStorage.create(tmp_path, layout=layout)
    previous = sys.getswitchinterval()
    # Python threads now wait up to a minute for the GIL; the native one does not.
    sys.setswitchinterval(60.0)
    try:
        with storage.writer() as writer:
            writer.submit(b"saved while the caller spins")
            deadline = time.monotonic() + PATIENCE
            while writer.saves == 0 and time.monotonic() < deadline:
                pass
            saves = writer.saves
    finally:
        sys.setswitchinterval(previous)
    assert saves == 1
    assert storage.load_checkpoint() == b"saved while the caller spins"


def test_submit_after_close_raises_value_error_naming_the_storage(
    saved: SessionStorage,
) -> None:
    writer = saved.writer()
    writer.close()
    with pytest.raises(ValueError, match="closed") as info:
        writer.submit(b"too late")
    assert saved.location in str(info.value)
    assert saved.load_checkpoint() == OLD


def test_the_with_block_closes_the_writer(storage: SessionStorage) -> None:
    with storage.writer() as writer:
        writer.submit(b"in the block")
    assert writer.closed
    assert storage.load_checkpoint() == b"in the block"


def submit_then_raise(storage: SessionStorage, data: bytes) -> None:
    """A with block that submits ``data`` and then fails."""
    with storage.writer() as writer:
        writer.submit(data)
        raise KeyError("the block's own error")


def test_a_raising_with_block_still_saves_its_last_checkpoint(
    storage: SessionStorage,
) -> None:
    with pytest.raises(KeyError, match="the block's own error"):
        submit_then_raise(storage, b"before the error")
    assert storage.load_checkpoint() == b"before the error"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need 3.11")
def test_a_failed_last_save_does_not_mask_the_blocks_error(
    saved: SessionStorage,
) -> None:
    Path(saved.paths.next).write_bytes(b"")
    with pytest.raises(KeyError, match="the block's own error") as info:
        submit_then_raise(saved, b"lost")
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1
    assert "LockedStorageError" in notes[0]
    assert saved.load_checkpoint() == OLD


# The calls that can observe a background save's error.
OBSERVERS = ("submit", "flush", "close")


def observe(writer: CheckpointWriter, observer: str) -> None:
    """Make the call ``observer`` names, after the failed save has run."""
    wait_for_saves(writer, 1)
    if observer == "submit":
        writer.submit(b"refused while the error is pending")
    elif observer == "flush":
        writer.flush()
    else:
        writer.close()


def assert_raised_once(writer: CheckpointWriter) -> None:
    """Once raised, the error is gone: flush and close return normally."""
    writer.flush()
    writer.close()


@pytest.mark.parametrize("observer", OBSERVERS)
def test_a_leftover_next_file_raises_locked_storage_error_once(
    saved: SessionStorage, observer: str
) -> None:
    Path(saved.paths.next).write_bytes(b"")
    writer = saved.writer()
    writer.submit(b"lost")
    with pytest.raises(LockedStorageError) as info:
        observe(writer, observer)
    assert type(info.value) is LockedStorageError
    assert info.value.errno == errno.EEXIST
    assert info.value.stale
    assert info.value.filename == saved.paths.next
    assert_raised_once(writer)
    assert writer.saves == 1
    assert saved.load_checkpoint() == OLD


@pytest.mark.parametrize("observer", OBSERVERS)
def test_a_live_lock_raises_locked_storage_error_once(
    saved: SessionStorage, observer: str
) -> None:
    fd = os.open(saved.location, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        writer = saved.writer()
        writer.submit(b"lost")
        with pytest.raises(LockedStorageError) as info:
            observe(writer, observer)
    finally:
        os.close(fd)
    assert info.value.errno == errno.EWOULDBLOCK
    assert not info.value.stale
    assert_raised_once(writer)
    assert saved.load_checkpoint() == OLD
    assert saved.lock_state() is LockState.UNLOCKED


@pytest.mark.parametrize("observer", OBSERVERS)
def test_a_vanished_directory_raises_file_not_found_error_once(
    saved: SessionStorage, observer: str
) -> None:
    shutil.rmtree(saved.location)
    writer = saved.writer()
    writer.submit(b"nowhere to go")
    with pytest.raises(FileNotFoundError) as info:
        observe(writer, observer)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == saved.location
    assert_raised_once(writer)


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small tmpfs, which a checkpoint of twice its size fills."""
    for mount in filesystems.mount_or_skip(filesystems.TMPFS, tmp_path_factory):
        yield mount.root


@pytest.mark.root
@pytest.mark.parametrize("observer", OBSERVERS)
def test_a_full_disk_raises_enospc_once_and_keeps_the_old_checkpoint(
    backend: str, small_disk: Path, observer: str
) -> None:
    storage = SessionStorage.create(small_disk)
    storage.save_checkpoint(OLD)
    writer = storage.writer()
    writer.submit(b"x" * (2 * filesystems.TMPFS_SIZE))
    with pytest.raises(OSError) as info:
        observe(writer, observer)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == storage.paths.next
    assert_raised_once(writer)
    assert storage.load_checkpoint() == OLD
    assert os.listdir(storage.location) == ["session"]


def test_a_refused_submission_is_not_saved_and_the_writer_goes_on(
    saved: SessionStorage,
) -> None:
    Path(saved.paths.next).write_bytes(b"")
    with saved.writer() as writer:
        writer.submit(b"fails")
        wait_for_saves(writer, 1)
        with pytest.raises(LockedStorageError):
            writer.submit(b"refused")
        assert saved.break_stale_lock()
        writer.flush()
        assert writer.saves == 1
        assert saved.load_checkpoint() == OLD
        writer.submit(b"after the lock was broken")
        writer.flush()
        assert saved.load_checkpoint() == b"after the lock was broken"
        assert writer.saves == 2


def test_a_checkpoint_waiting_behind_a_failed_save_is_dropped(
    saved: SessionStorage, gated: GatedSave
) -> None:
    gated.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), saved.paths.next)
    with saved.writer() as writer:
        writer.submit(b"fails")
        assert gated.entered.wait(PATIENCE)
        writer.submit(b"waits behind the failure")
        gated.release.set()
        with pytest.raises(OSError) as info:
            writer.flush()
        assert info.value is gated.error
        assert writer.saves == 1
        assert saved.load_checkpoint() == OLD
        writer.submit(b"after the failure")
    assert saved.load_checkpoint() == b"after the failure"
    assert gated.calls == [b"fails", b"after the failure"]


def test_every_flush_waiting_for_a_failed_save_raises(
    saved: SessionStorage, gated: GatedSave
) -> None:
    gated.error = OSError(errno.EIO, os.strerror(errno.EIO), saved.paths.next)
    writer = saved.writer()
    writer.submit(b"fails")
    assert gated.entered.wait(PATIENCE)
    raised: list[OSError] = []
    started = threading.Barrier(3)

    def flush() -> None:
        started.wait()
        try:
            writer.flush()
        except OSError as exc:
            raised.append(exc)

    flushers = [threading.Thread(target=flush) for _ in range(2)]
    for thread in flushers:
        thread.start()
    started.wait()
    # Both flushers are past the barrier; give them the time to start waiting.
    time.sleep(0.2)
    gated.release.set()
    for thread in flushers:
        thread.join(PATIENCE)
    assert [(type(e), e.errno) for e in raised] == [(OSError, errno.EIO)] * 2
    assert_raised_once(writer)


def test_submit_is_safe_from_several_threads(storage: SessionStorage) -> None:
    threads, per_thread = 4, 250
    start = threading.Barrier(threads)

    def submit_all(writer: CheckpointWriter, name: int) -> None:
        start.wait()
        for number in range(per_thread):
            writer.submit(b"thread %d checkpoint %d" % (name, number))

    with storage.writer() as writer:
        workers = [
            threading.Thread(target=submit_all, args=(writer, name))
            for name in range(threads)
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(PATIENCE)
        writer.flush()
        lasts = {
            b"thread %d checkpoint %d" % (n, per_thread - 1) for n in range(threads)
        }
        assert storage.load_checkpoint() in lasts
        assert 1 <= writer.saves <= threads * per_thread


# Submits numbered checkpoints forever, flushing every 50th and then reporting its
# number; the parent kills it right after reading a report.
HARNESS = textwrap.dedent(
    """
    import sys
    from sessionstore import SessionStorage

    writer = SessionStorage(sys.argv[1]).writer()
    number = 0
    while True:
        number += 1
        writer.submit(b"%d" % number)
        if number % 50 == 0:
            writer.flush()
            sys.stdout.write("%d\\n" % number)
            sys.stdout.flush()
    """
)


@pytest.mark.parametrize("reports", [1, 3, 10])
def test_a_flushed_checkpoint_survives_sigkill(
    storage: SessionStorage, backend_env: dict[str, str], reports: int
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", HARNESS, storage.location],
        stdout=subprocess.PIPE,
        env=backend_env,
    )
    assert child.stdout is not None
    try:
        for _ in range(reports):
            flushed = int(child.stdout.readline())
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    # Saves went on after the reported flush: the loaded one may be newer.
    assert int(storage.load_checkpoint()) >= flushed


def test_an_unclosed_writer_saves_its_last_checkpoint_at_exit(
    storage: SessionStorage, backend_env: dict[str, str]
) -> None:
    script = textwrap.dedent(
        """
        import sys
        from sessionstore import SessionStorage

        writer = SessionStorage(sys.argv[1]).writer()
        for number in range(100):
            writer.submit(b"unclosed %d" % number)
        """
    )
    subprocess.run(
        [sys.executable, "-c", script, storage.location], env=backend_env, check=True
    )
    assert storage.load_checkpoint() == b"unclosed 99"


def test_a_forked_child_refuses_the_parents_writer_and_exits_promptly(
    storage: SessionStorage, backend_env: dict[str, str]
) -> None:
    # The fork comes while the parent saves 32 MiB: the child must not inherit
    # that save's locked directory. It then exits normally, through the exit
    # hooks, with the parent's last checkpoint still waiting: it must neither
    # save it nor wait for a worker thread that does not exist in the child.
    script = textwrap.dedent(
        """
        import os, sys, time
        from sessionstore import SessionStorage

        writer = SessionStorage(sys.argv[1]).writer()
        writer.submit(b"x" * (32 << 20))
        time.sleep(0.01)
        writer.submit(b"the parent's")
        pid = os.fork()
        if pid == 0:
            try:
                writer.submit(b"the child's")
            except ValueError as exc:
                print("refused:", exc)
            writer.flush()
            writer.close()
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child exit status", os.waitstatus_to_exitcode(status))
        writer.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, storage.location],
        env=backend_env,
        check=True,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    refused, status = done.stdout.splitlines()
    assert refused.startswith(f"refused: checkpoint writer of {storage.location}")
    assert "not to this fork" in refused
    assert status == "child exit status 0"
    assert storage.load_checkpoint() == b"the parent's"


def test_an_unclosed_writer_saves_its_last_checkpoint_when_collected(
    storage: SessionStorage,
) -> None:
    import gc

    writer = storage.writer()
    writer.submit(b"dropped writer")
    del writer
    gc.collect()
    assert storage.load_checkpoint() == b"dropped writer"


_COLLECTED_ON_ITS_OWN_THREAD = """
import gc, sys, threading, time
import attrs
from sessionstore import CheckpointWriter, SessionStorage, _backend
from sessionstore._fallback import CheckpointWorker, save

gc.disable()


class CollectingWorker(CheckpointWorker):
    def __init__(self, location, codes, next_name, target):
        def save_one(data):
            # Stands for a cyclic collection that any allocation of the worker
            # thread may trigger in the middle of a save.
            gc.collect()
            save(location, data, codes, next_name, target)

        super().__init__(location, codes, next_name, target, save_one=save_one)


_backend.active.current = attrs.evolve(
    _backend.active.current, CheckpointWorker=CollectingWorker
)
storage = SessionStorage(sys.argv[1])


class Harness:
    pass


harness = Harness()
harness.me = harness
harness.writer = CheckpointWriter(storage)
harness.writer.submit(b"the last checkpoint")
del harness
deadline = time.monotonic() + 10
while time.monotonic() < deadline and any(
    t.name == "sessionstore-writer" for t in threading.enumerate()
):
    time.sleep(0.01)
alive = any(t.name == "sessionstore-writer" for t in threading.enumerate())
print(alive, storage.load_checkpoint())
"""


def test_a_writer_collected_on_its_own_thread_still_saves_and_stops(
    tmp_path: Path,
) -> None:
    storage = SessionStorage.create(tmp_path)
    env = {**os.environ, "SESSIONSTORE_BACKEND": "python"}
    done = subprocess.run(
        [sys.executable, "-c", _COLLECTED_ON_ITS_OWN_THREAD, storage.location],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False b'the last checkpoint'"


def test_a_saved_checkpoint_is_released_by_the_flush_that_waited_for_it(
    storage: SessionStorage,
) -> None:
    data = os.urandom(1 << 20)
    unreferenced = sys.getrefcount(data)
    writer = storage.writer()
    writer.submit(data)
    writer.flush()
    assert sys.getrefcount(data) == unreferenced
    writer.close()


def test_a_saved_checkpoint_is_released_without_another_call(
    backend: str, storage: SessionStorage
) -> None:
    if backend == "native" and sys.version_info < (3, 13):
        pytest.skip(
            "before Python 3.13 the native saving thread leaves the release to "
            "the writer's next call: scheduling it from that thread could hide "
            "a signal from the main thread"
        )
    data = os.urandom(1 << 20)
    unreferenced = sys.getrefcount(data)
    writer = storage.writer()
    writer.submit(data)
    # Nothing but the check runs meanwhile: no call into the writer, whose
    # next call would otherwise be what releases the saved checkpoint.
    deadline = time.monotonic() + PATIENCE
    while sys.getrefcount(data) > unreferenced:
        assert time.monotonic() < deadline, "the writer still holds the checkpoint"
        time.sleep(0.01)
    assert storage.load_checkpoint() == data
    writer.close()


@pytest.fixture(scope="module")
def freezable_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An ext4 filesystem ``fsfreeze`` can freeze, so saves block in the kernel."""
    if shutil.which("fsfreeze") is None:
        pytest.skip("fsfreeze (util-linux) is not installed")
    for mount in filesystems.mount_or_skip("ext4", tmp_path_factory):
        yield mount.root


# Ctrl-C (SIGINT, sent again and again) while close() or pause() waits for a
# save the frozen filesystem blocks; the filesystem is thawed only after the
# KeyboardInterrupt, so a wait that ignores signals never returns.
_INTERRUPTED_WHILE_FROZEN = """
import os, signal, subprocess, sys, threading, time
from sessionstore import SessionStorage
repository, waiting = sys.argv[1], sys.argv[2]
storage = SessionStorage.create(repository)
storage.save_checkpoint(b"old")
writer = storage.writer()
subprocess.run(["fsfreeze", "-f", repository], check=True)
def blocked():
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/stat") as stat:
            if stat.read().rpartition(")")[2].split()[0] == "D":
                return True
    return False
try:
    writer.submit(b"new")
    # pause() waits only for a save in flight: one blocked by the frozen disk.
    while not blocked():
        time.sleep(0.01)
    interrupted = threading.Event()
    def interrupt():
        while not interrupted.wait(0.2):
            os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=interrupt, daemon=True).start()
    try:
        writer.close() if waiting == "close" else writer._worker.pause()
        print("returned while frozen")
    except KeyboardInterrupt:
        print("interrupted")
    interrupted.set()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
finally:
    subprocess.run(["fsfreeze", "-u", repository], check=True)
if waiting == "pause":
    writer._worker.resume()
writer.close()
print(storage.load_checkpoint())
"""


@pytest.mark.root
@pytest.mark.parametrize("waiting", ["close", "pause"])
def test_ctrl_c_interrupts_a_wait_for_a_blocked_save(
    backend_env: dict[str, str], freezable_disk: Path, waiting: str
) -> None:
    repository = freezable_disk / f"{backend_env[_backend.ENV_VAR]}-{waiting}"
    repository.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_WHILE_FROZEN, str(repository), waiting],
        env=backend_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = child.communicate(timeout=PATIENCE)
    except subprocess.TimeoutExpired:
        # The child is stuck: thaw first, or it cannot even be killed.
        subprocess.run(["fsfreeze", "-u", str(repository)], check=True)
        child.kill()
        out, err = child.communicate()
    assert (out, err) == ("interrupted\nb'new'\n", "")


def test_a_closed_writer_names_its_location_as_the_file_system_spells_it(
    backend: str, tmp_path: Path
) -> None:
    storage = SessionStorage.create(tmp_path / os.fsdecode(b"caf\xe9"))
    writer = storage.writer()
    writer.close()
    with pytest.raises(ValueError) as closed:
        writer.submit(b"too late")
    assert str(closed.value) == f"checkpoint writer of {storage.location} is closed"
