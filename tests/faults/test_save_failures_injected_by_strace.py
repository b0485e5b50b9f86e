"""Every failure of the save sequence, injected into real syscalls of both backends.

``strace -P PATH -e inject=...`` makes one syscall on one path fail with a
chosen errno, whatever code issued it, so the native writer and the fallback
face exactly the same fault. Each case checks the error's type, errno and path,
and that the previous checkpoint survives with no lock left behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from sessionstore import Layout, LockState, SessionStorage

OLD: Final = b"the last good checkpoint"
NEW: Final = b"a newer checkpoint " * 1000

_CHILD: Final = """
import json, sys
from sessionstore import Layout, SessionStorage
storage = SessionStorage(sys.argv[1], layout=Layout[sys.argv[3]])
try:
    storage.save_checkpoint(bytes.fromhex(sys.argv[2]))
    report = {"raised": None}
except OSError as exc:
    report = {"raised": type(exc).__name__, "errno": exc.errno,
              "filename": exc.filename, "filename2": exc.filename2}
print(json.dumps(report))
"""

_RENAMES: Final = "rename,renameat,renameat2"

pytestmark = pytest.mark.skipif(
    shutil.which("strace") is None,
    reason="strace is not installed (.ci/run installs it)",
)


def run_with_fault(
    storage: SessionStorage,
    env: dict[str, str],
    path: str,
    calls: str,
    error: str,
    when: int = 1,
    data: bytes = NEW,
) -> dict[str, object]:
    """Save NEW in a child where the ``when``-th of ``calls`` on ``path`` fails.

    ``-P`` matches a call by its path or by a descriptor for it, so calls
    relative to the directory's descriptor (openat, renameat) match the
    directory's path.
    """
    command = [
        "strace", "-qq", "-f", "-o", "/dev/null", "-P", path,
        "-e", f"trace={calls}", "-e", f"inject={calls}:error={error}:when={when}",
        sys.executable, "-c", _CHILD, storage.location, data.hex(), storage.layout.name,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or not done.stdout.strip():
        pytest.fail(f"child failed ({done.returncode}): {done.stderr[-2000:]}")
    report: dict[str, object] = json.loads(done.stdout)
    return report


@pytest.fixture
def saved(storage: SessionStorage) -> SessionStorage:
    storage.save_checkpoint(OLD)
    return storage


@pytest.mark.parametrize(
    ("on", "calls", "error", "when"),
    [
        ("location", "openat", "EMFILE", 1),
        ("location", "flock", "ENOLCK", 1),
        ("location", "openat", "ENOSPC", 2),
        ("next", "write", "ENOSPC", 1),
        ("next", "write", "EIO", 1),
        ("next", "fsync", "EIO", 1),
        ("next", "close", "EIO", 1),
        ("location", _RENAMES, "EXDEV", 1),
    ],
    ids=["open-dir", "flock", "create-next", "write-enospc", "write-eio", "fsync-next",
         "close-next", "rename"],
)  # fmt: skip
def test_a_failing_syscall_raises_its_error_and_keeps_the_old_checkpoint(
    saved: SessionStorage,
    backend_env: dict[str, str],
    on: str,
    calls: str,
    error: str,
    when: int,
) -> None:
    path = saved.location if on == "location" else saved.paths.next
    report = run_with_fault(saved, backend_env, path, calls, error, when)
    assert report["raised"] == "OSError"
    assert report["errno"] == getattr(errno, error)
    opens_the_directory = calls == "openat" and when == 1
    named = (
        saved.location if calls == "flock" or opens_the_directory else saved.paths.next
    )
    assert report["filename"] == named
    if calls == _RENAMES:
        assert report["filename2"] == saved.session_file
    assert saved.load_checkpoint() == OLD
    assert os.listdir(saved.location) == ["session"]
    assert saved.lock_state() is LockState.UNLOCKED
    saved.save_checkpoint(NEW)
    assert saved.load_checkpoint() == NEW


def test_a_failed_directory_fsync_is_raised_after_the_switch(
    saved: SessionStorage, backend_env: dict[str, str]
) -> None:
    report = run_with_fault(saved, backend_env, saved.location, "fsync", "EIO")
    assert (report["raised"], report["errno"]) == ("OSError", errno.EIO)
    assert report["filename"] == saved.location
    assert saved.load_checkpoint() == NEW
    assert os.listdir(saved.location) == ["session"]
    assert saved.lock_state() is LockState.UNLOCKED


@pytest.mark.parametrize("calls", ["write", "fsync", "flock"])
def test_an_interrupted_syscall_is_retried(
    saved: SessionStorage, backend_env: dict[str, str], calls: str
) -> None:
    path = saved.location if calls == "flock" else saved.paths.next
    report = run_with_fault(saved, backend_env, path, calls, "EINTR")
    assert report == {"raised": None}
    assert saved.load_checkpoint() == NEW
    assert os.listdir(saved.location) == ["session"]


def test_a_permission_error_keeps_its_type(
    saved: SessionStorage, backend_env: dict[str, str]
) -> None:
    report = run_with_fault(saved, backend_env, saved.location, "openat", "EACCES", 2)
    assert report["raised"] == "PermissionError"
    assert report["filename"] == saved.paths.next
    assert saved.load_checkpoint() == OLD


def test_the_fault_really_reaches_the_save(
    saved: SessionStorage, backend_env: dict[str, str], tmp_path: Path
) -> None:
    """A fault on another path changes nothing: the filter is what aims it."""
    other = tmp_path / "elsewhere"
    report = run_with_fault(saved, backend_env, os.fspath(other), "fsync", "EIO")
    assert report == {"raised": None}
    assert saved.load_checkpoint() == NEW


def test_a_slotted_record_whose_flush_failed_is_never_loaded(
    backend: str, backend_env: dict[str, str], tmp_path: Path
) -> None:
    """fdatasync failed: the record may not be on disk, so the old one loads."""
    slotted = SessionStorage.create(tmp_path, layout=Layout.SLOTTED)
    slotted.save_checkpoint(b"older")
    slotted.save_checkpoint(OLD)
    report = run_with_fault(
        slotted, backend_env, slotted.paths.slots, "fdatasync", "EIO", data=b"fits"
    )
    assert (report["raised"], report["errno"]) == ("OSError", errno.EIO)
    assert report["filename"] == slotted.paths.slots
    assert slotted.load_checkpoint() == OLD
    assert slotted.load_previous() is None
    assert slotted.lock_state() is LockState.UNLOCKED
    slotted.save_checkpoint(NEW)
    assert slotted.load_checkpoint() == NEW
    assert slotted.load_previous() == OLD
