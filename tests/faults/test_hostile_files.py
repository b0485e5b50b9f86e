"""Files planted where a checkpoint should be: symlinks, FIFOs, devices, lies.

Nothing opened for writing follows a symlink; nothing read blocks on a FIFO,
never ends on a device, or reads more than the file's real size; an
allocation that cannot be had is MemoryError, never an abort of the process.
Each situation is made for real, on both backends; the operations that hung or
aborted before run in a child process with a time limit (and a memory limit
where the failure was an abort), so a regression fails instead of hanging.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Final

import pytest

from sessionstore import Layout, SessionStorage
from sessionstore._naming import SLOTS_NAME
from sessionstore._slots_format import RECORD_HEADER_SIZE, encode_file_header

ROOT: Final = Path(__file__).resolve().parents[2]
# Far below what reading a claimed 8 GiB (or a device with no end) needs, far
# above what a checkpoint of a few KiB and the interpreter need.
_MEMORY_LIMIT: Final = 1 << 30
_CHILD_TIMEOUT: Final = 60


def _slotted(tmp_path: Path, name: str, data: bytes) -> SessionStorage:
    storage = SessionStorage.create(tmp_path / name, layout=Layout.SLOTTED)
    storage.save_checkpoint(data)
    storage.save_checkpoint(data + b"!")
    return storage


def _run_child(
    code: str, env: dict[str, str], *, memory_limit: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter on ``env``'s backend, given at most
    ``_CHILD_TIMEOUT`` seconds (and ``memory_limit`` bytes of address space)."""
    prelude = "import resource\n"
    if memory_limit is not None:
        limits = (memory_limit, memory_limit)
        prelude += f"resource.setrlimit(resource.RLIMIT_AS, {limits})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        env=env,
        capture_output=True,
        text=True,
        timeout=_CHILD_TIMEOUT,
        check=False,
    )


# --- symlinks: nothing opened for writing follows one --------------------------


def _link_slots_to_other_session(tmp_path: Path) -> tuple[SessionStorage, Path, bytes]:
    """Session A, whose ``session.slots`` is a symlink to session B's; B's bytes."""
    mine = _slotted(tmp_path, "a", b"mine")
    theirs = _slotted(tmp_path, "b", b"theirs")
    target = Path(theirs.location) / SLOTS_NAME
    planted = Path(mine.location) / SLOTS_NAME
    planted.unlink()
    planted.symlink_to(target)
    return mine, target, target.read_bytes()


def test_a_slotted_save_never_writes_through_a_symlinked_slots_file(
    backend: str, tmp_path: Path
) -> None:
    mine, target, before = _link_slots_to_other_session(tmp_path)
    with pytest.raises(OSError) as raised:
        mine.save_checkpoint(b"written through the link")
    assert raised.value.errno == errno.ELOOP
    assert raised.value.filename == os.path.join(mine.location, SLOTS_NAME)
    assert target.read_bytes() == before
    assert mine.lock_state().name == "UNLOCKED"


def test_a_held_slotted_session_never_writes_through_a_symlinked_slots_file(
    backend: str, tmp_path: Path
) -> None:
    mine, target, before = _link_slots_to_other_session(tmp_path)
    with mine.hold() as held, pytest.raises(OSError) as raised:
        held.save_checkpoint(b"written through the link")
    assert raised.value.errno == errno.ELOOP
    assert target.read_bytes() == before


# --- FIFOs and devices: nothing read blocks or never ends ----------------------


def _fifo_child(location: str, call: str) -> str:
    return (
        "from sessionstore import SessionStorage\n"
        f"storage = SessionStorage({location!r})\n"
        "try:\n"
        f"    storage.{call}()\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__, exc.errno, exc.strerror, exc.filename)\n"
        "else:\n"
        "    print('returned')\n"
    )


@pytest.mark.parametrize("name", ["session", SLOTS_NAME])
@pytest.mark.parametrize("call", ["load_checkpoint", "load_previous"])
def test_a_fifo_as_the_checkpoint_is_refused_without_blocking(
    backend_env: dict[str, str], tmp_path: Path, name: str, call: str
) -> None:
    storage = SessionStorage.create(tmp_path / "repo")
    fifo = os.path.join(storage.location, name)
    os.mkfifo(fifo)
    done = _run_child(_fifo_child(storage.location, call), backend_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"OSError {errno.EINVAL} not a regular file {fifo}\n"


def test_a_fifo_fed_without_end_is_refused_not_read(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    """A writer keeps the FIFO full: a load that read it would never end (and
    ran the native backend out of memory, aborting the process)."""
    storage = SessionStorage.create(tmp_path / "repo")
    fifo = os.path.join(storage.location, "session")
    os.mkfifo(fifo)
    stop = threading.Event()

    def feed() -> None:
        # Opening the write end waits for the child's read end; O_NONBLOCK
        # retried, so the feeder gives up when the test is over.
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                stop.wait(0.01)
                continue
            try:
                while not stop.is_set():
                    try:
                        os.write(fd, bytes(65536))
                    except BlockingIOError:
                        stop.wait(0.001)
            except BrokenPipeError:
                pass
            finally:
                os.close(fd)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        done = _run_child(
            _fifo_child(storage.location, "load_checkpoint"),
            backend_env,
            memory_limit=_MEMORY_LIMIT,
        )
    finally:
        stop.set()
        feeder.join()
    assert done.returncode == 0, done.stderr
    assert "not a regular file" in done.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
@pytest.mark.parametrize("name", ["session", SLOTS_NAME])
def test_a_device_with_no_end_is_refused_not_read(
    backend_env: dict[str, str], tmp_path: Path, name: str
) -> None:
    storage = SessionStorage.create(tmp_path / "repo")
    device = os.path.join(storage.location, name)
    zero = os.stat("/dev/zero").st_rdev
    os.mknod(device, stat.S_IFCHR | 0o600, zero)
    done = _run_child(
        _fifo_child(storage.location, "load_checkpoint"),
        backend_env,
        memory_limit=_MEMORY_LIMIT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["OSError", str(errno.EINVAL)]
    assert "not a regular file" in done.stdout


# --- real sizes: a header's claim beyond the file is damage --------------------

_CLAIM: Final = 8 << 30
_RECORD: Final = struct.Struct("<4sIQQI")


def _plant_a_lying_slots_file(location: str) -> Path:
    """A slots file whose geometry and first record claim 8 GiB; the file
    itself is a few KiB of data, extended sparsely to a MiB."""
    path = Path(location) / SLOTS_NAME
    prefix = _RECORD.pack(b"SREC", 1, 7, _CLAIM, 0)
    head = prefix + struct.pack("<I", zlib.crc32(b"", zlib.crc32(prefix)))
    assert len(head) == RECORD_HEADER_SIZE
    with open(path, "wb") as planted:
        planted.write(encode_file_header(2 * _CLAIM) + head + b"some data")
        planted.truncate(1 << 20)
    assert path.stat().st_blocks * 512 < 1 << 20
    return path


def _claim_child(location: str, action: str) -> str:
    return (
        "from sessionstore import Layout, SessionStorage\n"
        "from sessionstore._errors import CorruptCheckpointError\n"
        f"storage = SessionStorage({location!r}, layout=Layout.SLOTTED)\n"
        "try:\n"
        f"    print(repr({action}))\n"
        "except CorruptCheckpointError as exc:\n"
        "    print('damaged', exc.filename)\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
    )


def test_a_record_claimed_beyond_the_file_is_damage_not_a_read(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    storage = SessionStorage.create(tmp_path / "repo", layout=Layout.SLOTTED)
    path = _plant_a_lying_slots_file(storage.location)
    for action in ("storage.load_checkpoint()", "storage.load_previous()"):
        done = _run_child(
            _claim_child(storage.location, action),
            backend_env,
            memory_limit=_MEMORY_LIMIT,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["damaged", str(path)]


def test_a_save_over_a_lying_slots_file_rebuilds_it(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    """The save reads no claimed record, and writes its record in a new file
    instead of 8 GiB past the end of this one."""
    storage = SessionStorage.create(tmp_path / "repo", layout=Layout.SLOTTED)
    path = _plant_a_lying_slots_file(storage.location)
    action = "(storage.save_checkpoint(b'new'), storage.load_checkpoint())[1]"
    done = _run_child(
        _claim_child(storage.location, action), backend_env, memory_limit=_MEMORY_LIMIT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "b'new'"
    assert path.stat().st_size < 1 << 20
    assert storage.load_previous() is None


# --- the extension never aborts the process ------------------------------------


def test_a_panic_in_the_extension_unwinds_into_python() -> None:
    """PyO3 turns a panic that unwinds into PanicException; one built with
    ``panic = "abort"`` kills the host process instead."""
    tomllib = pytest.importorskip("tomllib", reason="reading Cargo.toml needs 3.11")
    if not (ROOT / "Cargo.toml").exists():
        pytest.skip("no Cargo.toml: the suite runs beside an installed wheel")
    with open(ROOT / "Cargo.toml", "rb") as manifest:
        profiles = tomllib.load(manifest).get("profile", {})
    for name, profile in profiles.items():
        assert profile.get("panic", "unwind") == "unwind", name
