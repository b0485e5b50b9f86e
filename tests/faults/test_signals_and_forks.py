"""Signals at random moments and forks from other threads never leave a lock.

Each signal test runs a child interpreter (so no other thread of the test
process takes the signals, and a deadlock fails the test by its time limit)
that arms a one-shot ``setitimer`` at a random moment of each of thousands of
operations, with a handler raising as Ctrl-C does; after each operation it
checks that no descriptor was left open, no ``session.next`` left behind and
no lock left held. Each fork test forks real children (``multiprocessing``'s
fork start method) from the main thread while another thread runs the
operation, and has each child count the descriptors of the session it got.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest

from sessionstore import Durability, Layout, LockState, SessionStorage

_CHILD_TIMEOUT: Final = 300
_ITERATIONS: Final = 2000


def _run(script: str, env: dict[str, str], *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PRELUDE + script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=_CHILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


# What every signal child shares: a handler raising Interrupted once per
# arming, and the checks made after each operation.
_PRELUDE: Final = """
import fcntl, os, random, signal, sys, time
from sessionstore import Durability, Layout, LockState, SessionStorage

class Interrupted(Exception):
    pass

fired = False

def interrupt(signum, frame):
    global fired
    fired = True
    raise Interrupted

signal.signal(signal.SIGALRM, interrupt)
rng = random.Random(int(sys.argv[2]))

def wait_for_the_signal():
    while not fired:
        # A call, not an empty loop: the interpreter may not look for
        # signals in a loop that calls nothing.
        time.sleep(1e-5)

def interrupted(operation, longest):
    '''Run operation with one SIGALRM due at a random moment of it; True
    when the handler's exception reached here.'''
    global fired
    fired = False
    try:
        signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, longest))
        operation()
        # In a function of its own: CPython 3.13.0 lets a handler's exception
        # raised at a loop's condition escape the try around the loop.
        wait_for_the_signal()
    except Interrupted:
        return True
    return False

def descriptors():
    return len(os.listdir("/proc/self/fd"))

def locked(location):
    # Whether the directory's flock is held, asked of the kernel directly.
    fd = os.open(location, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False

def check(storage, baseline, held=False):
    problems = []
    count = descriptors()
    if count != baseline:
        problems.append(f"descriptors {count} != {baseline}")
    if os.path.lexists(os.path.join(storage.location, "session.next")):
        problems.append("session.next left behind")
    if locked(storage.location) != held:
        problems.append(f"locked: {not held}")
    return problems
"""

_ONE_SHOT: Final = """
layout = Layout[sys.argv[3]]
storage = SessionStorage(sys.argv[1], layout=layout, durability=Durability.NONE)
storage.save_checkpoint(b"first")
operations = {
    "save": lambda: storage.save_checkpoint(b"x" * rng.randrange(1, 20000)),
    "load": storage.load_checkpoint,
    "convert": lambda: storage.convert_layout(rng.choice(list(Layout))),
}
operation = operations[sys.argv[4]]
baseline = descriptors()
hits = 0
for i in range(int(sys.argv[5])):
    hits += interrupted(operation, 4e-4)
    problems = check(storage, baseline)
    if problems:
        print("after", i, "interrupted", hits, *problems)
        sys.exit(1)
print("ok", hits)
"""


@pytest.mark.parametrize("layout", list(Layout))
@pytest.mark.parametrize("operation", ["save", "load", "convert"])
def test_no_signal_leaves_a_descriptor_next_file_or_lock(
    backend_env: dict[str, str], tmp_path: Path, layout: Layout, operation: str
) -> None:
    storage = SessionStorage.create(tmp_path / "repo")
    words = _run(
        _ONE_SHOT,
        backend_env,
        storage.location,
        "1",
        layout.name,
        operation,
        str(_ITERATIONS),
    )
    assert words[0] == "ok"
    # The handler ran every time: its exception reached the loop.
    assert int(words[1]) == _ITERATIONS


_HELD: Final = """
storage = SessionStorage(sys.argv[1], layout=Layout[sys.argv[3]],
                         durability=Durability.NONE)
held = storage.hold()
# Slots sized for the largest save below, open from the second save on: the
# descriptors a held session keeps are the same after every save.
held.save_checkpoint(b"first" * 4000)
held.save_checkpoint(b"second")
baseline = descriptors()
for i in range(int(sys.argv[4])):
    interrupted(lambda: held.save_checkpoint(b"x" * rng.randrange(1, 20000)), 4e-4)
    problems = check(storage, baseline, held=True)
    if problems:
        print("after", i, *problems)
        sys.exit(1)
held.save_checkpoint(b"last")
held.close()
print("ok", storage.lock_state().name, storage.load_checkpoint().decode())
"""


@pytest.mark.parametrize("layout", list(Layout))
def test_no_signal_breaks_a_held_session(
    backend_env: dict[str, str], tmp_path: Path, layout: Layout
) -> None:
    storage = SessionStorage.create(tmp_path / "repo")
    words = _run(
        _HELD, backend_env, storage.location, "2", layout.name, str(_ITERATIONS)
    )
    assert words == ["ok", "UNLOCKED", "last"]


_WRITER: Final = """
storage = SessionStorage(sys.argv[1], durability=Durability.NONE)
writer = storage.writer()
for i in range(int(sys.argv[3])):
    interrupted(lambda: writer.submit(b"x" * rng.randrange(1, 20000)), 1e-4)
    if i % 100 == 0:
        interrupted(writer.flush, 1e-3)
writer.submit(b"last")
writer.close()
print("ok", storage.lock_state().name, storage.load_checkpoint().decode())
"""


def test_close_returns_after_interrupted_submits_and_flushes(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    storage = SessionStorage.create(tmp_path / "repo")
    words = _run(_WRITER, backend_env, storage.location, "3", str(_ITERATIONS))
    assert words == ["ok", "UNLOCKED", "last"]


_SAVE_FROM_HANDLER: Final = """
layout = Layout[sys.argv[3]]
storage = SessionStorage(sys.argv[1], layout=layout, durability=Durability.NONE)
final = SessionStorage(sys.argv[1], layout=layout, durability=Durability.NONE)
refused = []
saved = 0

def save_final(signum, frame):
    global saved
    try:
        final.save_checkpoint(b"final")
    except OSError as exc:
        refused.append(repr(exc))
    else:
        saved += 1

signal.signal(signal.SIGTERM, save_final)
for i in range(int(sys.argv[4])):
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, save_final)
    signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 3e-4))
    while saved + len(refused) <= i:
        storage.save_checkpoint(b"main loop " * rng.randrange(1, 2000))
print(saved, len(refused), *refused[:3])
"""


@pytest.mark.parametrize("layout", list(Layout))
def test_a_save_from_a_signal_handler_works_while_the_main_loop_saves(
    backend_env: dict[str, str], tmp_path: Path, layout: Layout
) -> None:
    """A harness's last save, made when it is told to stop, must not be
    refused because the save it interrupted holds the lock."""
    storage = SessionStorage.create(tmp_path / "repo")
    words = _run(
        _SAVE_FROM_HANDLER, backend_env, storage.location, "4", layout.name, "500"
    )
    assert words == ["500", "0"]


_CLOSE_FROM_HANDLER: Final = """
for run in range(int(sys.argv[3])):
    storage = SessionStorage.create(sys.argv[1], durability=Durability.NONE)
    writer = storage.writer()

    def close_writer(signum, frame):
        writer.close()

    signal.signal(signal.SIGALRM, close_writer)
    signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-4, 2e-2))
    try:
        while True:
            writer.submit(b"x" * rng.randrange(1, 20000))
    except ValueError:
        pass  # closed by the handler
    assert storage.lock_state() is LockState.UNLOCKED
print("ok")
"""


def test_a_writer_closed_by_a_signal_handler_while_submitting_never_deadlocks(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    """The handler runs, however the submissions and the saving thread's
    releases of saved checkpoints interleave with the signal."""
    assert _run(_CLOSE_FROM_HANDLER, backend_env, str(tmp_path), "5", "30") == ["ok"]


def test_a_held_session_dropped_after_a_failed_save_is_released_at_once(
    backend: str, tmp_path: Path
) -> None:
    """No reference cycle keeps a failed save's session (and its lock) alive
    until the cycle collector runs."""
    storage = SessionStorage.create(tmp_path / "repo", layout=Layout.SLOTTED)
    storage.save_checkpoint(b"first")
    slots = Path(storage.location) / "session.slots"
    held = storage.hold()
    slots.unlink()
    slots.mkdir()  # the next save cannot open it
    gc.disable()
    try:
        with pytest.raises(OSError):
            held.save_checkpoint(b"fails")
        del held
        assert storage.lock_state() is LockState.UNLOCKED
    finally:
        gc.enable()


# --- forks from another thread -----------------------------------------------


def _count_descriptors_into(path: str) -> None:
    """In a forked child: exit with how many descriptors it has into ``path``."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target == path or target.startswith(path + os.sep):
            found += 1
    os._exit(min(found, 100))


def _forks_during(
    operation: Callable[[], object], watched: str, forks: int
) -> list[int | None]:
    """Fork ``forks`` children from this thread while another runs
    ``operation`` over and over; how many descriptors into ``watched`` each got."""
    context = multiprocessing.get_context("fork")
    stop = threading.Event()
    errors: list[BaseException] = []

    def repeat() -> None:
        try:
            while not stop.is_set():
                operation()
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=repeat)
    worker.start()
    counts: list[int | None] = []
    try:
        with warnings.catch_warnings():
            # Forking a process with threads: exactly what is under test.
            warnings.simplefilter("ignore", DeprecationWarning)
            for _ in range(forks):
                child = context.Process(target=_count_descriptors_into, args=(watched,))
                child.start()
                child.join()
                counts.append(child.exitcode)
    finally:
        stop.set()
        worker.join()
    assert not errors, errors
    return counts


def _operations(repo: Path) -> dict[str, tuple[Callable[[], object], str]]:
    replace = SessionStorage.create(repo, durability=Durability.NONE)
    replace.save_checkpoint(b"x" * 100_000)
    slotted = SessionStorage.create(
        repo, durability=Durability.NONE, layout=Layout.SLOTTED
    )
    slotted.save_checkpoint(b"x" * 100_000)
    converted = SessionStorage.create(repo, durability=Durability.NONE)
    converted.save_checkpoint(b"x" * 100_000)

    def convert() -> None:
        to_slotted = os.path.exists(converted.session_file)
        converted.convert_layout(Layout.SLOTTED if to_slotted else Layout.REPLACE)

    removed = repo / "removed"

    def create_save_remove() -> None:
        session = SessionStorage.create(removed, durability=Durability.NONE)
        session.save_checkpoint(b"x" * 100_000)
        session.remove()

    return {
        "save": (lambda: replace.save_checkpoint(b"y" * 100_000), replace.location),
        "slotted save": (
            lambda: slotted.save_checkpoint(b"y" * 100_000),
            slotted.location,
        ),
        "load": (replace.load_checkpoint, replace.location),
        "convert": (convert, converted.location),
        "remove": (create_save_remove, str(removed)),
    }


@pytest.mark.parametrize(
    "operation", ["save", "slotted save", "load", "convert", "remove"]
)
def test_no_child_forked_during_an_operation_inherits_its_descriptors(
    backend: str, tmp_path: Path, operation: str
) -> None:
    run, watched = _operations(tmp_path / "repo")[operation]
    counts = _forks_during(run, watched, 300)
    assert counts == [0] * len(counts), set(counts)


_FORK_WHILE_ANOTHER_THREAD_CALLS: Final = """
import os, sys, threading
from sessionstore import Durability, SessionStorage
storage = SessionStorage.create(sys.argv[1], durability=Durability.NONE)
stop = threading.Event()

def busy():
    while not stop.is_set():
        storage.lock_state()

thread = threading.Thread(target=busy)
thread.start()
for _ in range(200):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
stop.set()
thread.join()
print("forked")
"""


def test_a_fork_is_not_starved_by_a_thread_calling_the_library_in_a_loop(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    """A fork waits for the shielded calls in flight, not for ever: a thread
    starting one call after another must not keep it from its turn."""
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-c",
            _FORK_WHILE_ANOTHER_THREAD_CALLS,
            str(tmp_path / "repo"),
        ],
        env=backend_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "forked\n"), done.stderr[-3000:]


def test_a_session_saved_during_a_fork_is_not_held_by_the_child(
    backend: str, tmp_path: Path
) -> None:
    """The lock itself: while a child forked during a save lives, the one
    thread saving (the parent's only writer) is never refused."""
    storage = SessionStorage.create(tmp_path / "repo", durability=Durability.NONE)
    context = multiprocessing.get_context("fork")
    stop = threading.Event()
    refused: list[OSError] = []

    def save() -> None:
        while not stop.is_set():
            try:
                storage.save_checkpoint(b"z" * 50_000)
            except OSError as exc:
                refused.append(exc)

    saver = threading.Thread(target=save)
    saver.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for _ in range(100):
                wait_end, release_end = context.Pipe(duplex=False)
                child = context.Process(target=wait_end.recv)
                child.start()
                stop.wait(0.01)  # the saver saves on while the child lives
                release_end.send(None)
                child.join()
    finally:
        stop.set()
        saver.join()
    assert not refused, refused[:3]
