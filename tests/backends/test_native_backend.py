"""The native backend against the fallback: the same errors for the same failures,
the data types it takes, how it is chosen, and that saves release the GIL."""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import struct
import subprocess
import sys
import threading
import types
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest
from backend_parity import both_backends, listing, outcome

from sessionstore import (
    CorruptCheckpointError,
    Durability,
    LockState,
    SessionStorage,
    _backend,
)
from sessionstore._lock_state import LOCK_STATE_CODES
from sessionstore._save_plan import plan_save

DURABLE: Final = plan_save(Durability.FULL)


# Each case prepares a session directory and says what to save into (and how).
_Case = Callable[[Path], tuple[str, bytes]]


def _missing(session: Path) -> tuple[str, bytes]:
    return str(session / "gone"), DURABLE.codes


def _a_file(session: Path) -> tuple[str, bytes]:
    (session / "file").write_bytes(b"")
    return str(session / "file"), DURABLE.codes


def _leftover(session: Path) -> tuple[str, bytes]:
    (session / "session.next").write_bytes(b"partial")
    return str(session), DURABLE.codes


def _target_is_a_directory(session: Path) -> tuple[str, bytes]:
    (session / "session" / "inside").mkdir(parents=True)
    return str(session), DURABLE.codes


def _unwritable(session: Path) -> tuple[str, bytes]:
    # sysfs refuses new files even to root, unlike a chmod-ed directory.
    return "/sys/kernel", DURABLE.codes


def _nul_in_location(session: Path) -> tuple[str, bytes]:
    return f"{session}\0x", DURABLE.codes


def _unknown_step(session: Path) -> tuple[str, bytes]:
    return str(session), DURABLE.codes[:4] + b"\x2a"


def _relative(session: Path) -> tuple[str, bytes]:
    return os.path.relpath(session), DURABLE.codes


_CASES: Final[dict[str, _Case]] = {
    "missing-dir": _missing,
    "location-is-a-file": _a_file,
    "leftover-next": _leftover,
    "target-is-a-directory": _target_is_a_directory,
    "unwritable-dir": _unwritable,
    "nul-in-location": _nul_in_location,
    "unknown-step": _unknown_step,
    "relative-location": _relative,
}


@pytest.mark.parametrize("case", list(_CASES))
def test_both_backends_fail_alike(
    native: _backend.Backend, tmp_path: Path, case: str
) -> None:
    outcomes = {}
    for name, chosen in both_backends(native).items():
        session = tmp_path / name
        session.mkdir()
        location, codes = _CASES[case](session)
        result = outcome(
            chosen.save, location, b"data", codes, "session.next", "session"
        )
        # The same error, up to the name of each backend's own directory.
        outcomes[name] = (
            tuple(
                part.replace(f"/{name}", "/<session>")
                if isinstance(part, str)
                else part
                for part in result
            ),
            listing(session),
        )
    assert outcomes["native"] == outcomes["python"]
    if case == "relative-location":
        assert outcomes["python"] == (("returned", None), ["session"])
    else:
        assert outcomes["python"][0][0] != "returned"


def test_a_held_lock_fails_alike(native: _backend.Backend, tmp_path: Path) -> None:
    outcomes = []
    for chosen in both_backends(native).values():
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            outcomes.append(
                outcome(
                    chosen.save,
                    str(tmp_path),
                    b"x",
                    DURABLE.codes,
                    "session.next",
                    "session",
                )
            )
        finally:
            os.close(fd)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1] == errno.EWOULDBLOCK
    assert outcomes[0][-1] is False
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda d: d / "gone", id="missing"),
        pytest.param(lambda d: d, id="directory"),
    ],
)
def test_load_fails_alike(
    native: _backend.Backend, tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    path = str(make(tmp_path))
    python, ours = (outcome(b.load, path) for b in (_backend.PYTHON, native))
    assert ours == python
    assert python[0] in {FileNotFoundError, IsADirectoryError}


@pytest.mark.parametrize("probe", ["lock_state", "break_stale_lock"])
@pytest.mark.parametrize("where", ["missing", "file"])
def test_lock_probes_fail_alike(
    native: _backend.Backend, tmp_path: Path, probe: str, where: str
) -> None:
    path = tmp_path / "x"
    if where == "file":
        path.write_bytes(b"")
    outcomes = [
        outcome(getattr(b, probe), str(path)) for b in (_backend.PYTHON, native)
    ]
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] in {FileNotFoundError, NotADirectoryError}
    assert outcomes[0][3] == str(path)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, for a full disk; needs root and mount rights."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.root
def test_a_full_disk_fails_alike(native: _backend.Backend, small_tmpfs: Path) -> None:
    outcomes = {}
    for name, chosen in both_backends(native).items():
        session = small_tmpfs / name
        session.mkdir()
        chosen.save(str(session), b"old", DURABLE.codes, "session.next", "session")
        result = outcome(
            chosen.save,
            str(session),
            b"x" * (1 << 20),
            DURABLE.codes,
            "session.next",
            "session",
        )
        outcomes[name] = (
            result[:3],
            str(result[3]).replace(f"/{name}/", "/"),
            listing(session),
            chosen.load(str(session / "session")),
        )
    assert outcomes["native"] == outcomes["python"]
    assert outcomes["python"][0][:2] == (OSError, errno.ENOSPC)
    assert outcomes["python"][2:] == (["session"], b"old")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"bytes \x00\xff", id="bytes"),
        pytest.param(bytearray(b"a bytearray"), id="bytearray"),
        pytest.param(memoryview(b"--a memoryview slice--")[2:-2], id="memoryview"),
        pytest.param(memoryview(array.array("I", [1, 2, 3])), id="wide-items"),
        pytest.param(b"", id="empty"),
    ],
)
def test_native_saves_any_contiguous_buffer(
    native: _backend.Backend, tmp_path: Path, data: bytes | bytearray | memoryview
) -> None:
    native.save(str(tmp_path), data, DURABLE.codes, "session.next", "session")

    assert native.load(str(tmp_path / "session")) == bytes(data)
    assert listing(tmp_path) == ["session"]


def test_native_refuses_a_strided_buffer_before_touching_the_disk(
    native: _backend.Backend, tmp_path: Path
) -> None:
    strided = memoryview(b"abcdef")[::2]

    with pytest.raises(BufferError, match="contiguous"):
        native.save(str(tmp_path), strided, DURABLE.codes, "session.next", "session")
    assert listing(tmp_path) == []


def test_native_lock_state_reports_each_state(
    native: _backend.Backend, tmp_path: Path
) -> None:
    location = str(tmp_path)
    assert LOCK_STATE_CODES[native.lock_state(location)] is LockState.UNLOCKED
    (tmp_path / "session.next").write_bytes(b"")
    assert LOCK_STATE_CODES[native.lock_state(location)] is LockState.STALE
    fd = os.open(location, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert LOCK_STATE_CODES[native.lock_state(location)] is LockState.HELD
        assert native.break_stale_lock(location) is False
    finally:
        os.close(fd)
    assert native.break_stale_lock(location) is True
    assert listing(tmp_path) == []


def test_a_save_lets_another_thread_run(storage: SessionStorage) -> None:
    """While a durable save runs, a second Python thread sees ``session.next``.

    The next file exists only inside the save call, so a Python thread can see
    it only if the save released the GIL; with it held throughout, it never can.
    """
    data = b"\x5a" * (32 << 20)
    next_path = storage.paths.next
    seen = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if os.path.lexists(next_path):
                seen.set()
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(20):
            storage.save_checkpoint(data)
            if seen.is_set():
                break
    finally:
        done.set()
        watcher.join()
    assert seen.is_set()


def _fake_extension(**functions: object) -> types.ModuleType:
    module = types.ModuleType("sessionstore._native")
    for name, value in functions.items():
        setattr(module, name, value)
    return module


def test_an_extension_lacking_a_function_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    partial = _fake_extension(save=print, load=print, lock_state=print)
    monkeypatch.setitem(sys.modules, "sessionstore._native", partial)
    monkeypatch.delattr("sessionstore._native", raising=False)

    with pytest.raises(ImportError, match="lacks break_stale_lock"):
        _backend.select({_backend.ENV_VAR: "native"})


def test_an_unimportable_extension_falls_back_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "sessionstore._native", None)
    monkeypatch.delattr("sessionstore._native", raising=False)

    with caplog.at_level(logging.DEBUG, logger="sessionstore"):
        chosen = _backend.select({})

    assert chosen is _backend.PYTHON
    assert "native writer unavailable" in caplog.text


@pytest.mark.parametrize(
    ("wanted", "expected"), [("", "native"), ("native", "native"), ("python", "python")]
)
def test_the_variable_picks_the_backend(wanted: str, expected: str) -> None:
    assert _backend.select({_backend.ENV_VAR: wanted}).name == expected


def test_an_unknown_backend_name_is_an_error() -> None:
    with pytest.raises(ImportError, match="must be one of"):
        _backend.select({_backend.ENV_VAR: "rust"})


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SESSIONSTORE_LONG") != "1",
    reason="writes and reads a file over 2 GiB: set SESSIONSTORE_LONG=1",
)
def test_a_checkpoint_over_2_gib_round_trips(storage: SessionStorage) -> None:
    data = bytearray(b"\xa5") * ((2 << 30) + 4099)
    data[-1] = 0x5A
    storage.save_checkpoint(data)
    loaded = storage.load_checkpoint()
    assert len(loaded) == len(data)
    assert loaded[-2:] == b"\xa5\x5a"
    del loaded, data


def test_a_session_modified_after_2262_lists_and_scans_alike(
    native: _backend.Backend, tmp_path: Path
) -> None:
    # 10**19 ns is past what a signed 64-bit count of nanoseconds holds.
    for name, mtime_ns in [("a.session", 10**18), ("future.session", 10**19)]:
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, ns=(mtime_ns, mtime_ns))
    (tmp_path / "b.session").mkdir()
    found = {
        name: (b.list_sessions(str(tmp_path)), b.scan_sessions(str(tmp_path)))
        for name, b in both_backends(native).items()
    }
    assert found["native"] == found["python"]
    names, scanned = found["native"]
    assert names == ["future.session", "b.session", "a.session"]
    assert scanned is not None
    assert scanned[0][0][:2] == ("future.session", 10**19)


_NAMES_UNDER_ASCII: Final = """
import os, sys
from sessionstore import _backend
from sessionstore._save_plan import plan_save
base = os.fsencode(sys.argv[1])
# The same age: ordered by name, as the interpreter decodes it.
for name in (b"\\xc3\\xa9.session", b"caf\\xc3\\xa9.session", b"\\x80.session"):
    os.mkdir(os.path.join(base, name))
    os.utime(os.path.join(base, name), ns=(10**18, 10**18))
plan = plan_save()
for b in (_backend.PYTHON, _backend.load_native()):
    try:
        b.save(os.path.join(sys.argv[1], "caf\\u00e9.session"), b"x", plan.codes,
               plan.next_name, plan.target_name)
        saved = "saved"
    except UnicodeEncodeError as exc:
        saved = type(exc).__name__
    scanned = [row[0] for row in b.scan_sessions(sys.argv[1])[0]]
    names = b.list_sessions(sys.argv[1])
    print(ascii((sys.getfilesystemencoding(), names, scanned, saved)))
"""


def test_paths_follow_a_file_system_encoding_other_than_utf8(
    native: _backend.Backend, tmp_path: Path
) -> None:
    # The C locale without coercion or UTF-8 mode: the file system encoding is
    # ASCII, so a UTF-8 name decodes to surrogates and "é" cannot be encoded.
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    env.pop("LANG", None)
    ran = subprocess.run(
        [sys.executable, "-c", _NAMES_UNDER_ASCII, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    python, ours = ran.stdout.splitlines()
    assert ours == python
    # UTF-8 would put "é.session" (U+00E9) before "\udc80.session".
    names = ["caf\udcc3\udca9.session", "\udc80.session", "\udcc3\udca9.session"]
    assert python == ascii(("ascii", names, names, "UnicodeEncodeError"))


@pytest.mark.parametrize("slot_size", [2**62, 2**63, 2**64 - 4096])
def test_a_slot_size_past_any_file_offset_is_a_corrupt_file(
    native: _backend.Backend, tmp_path: Path, slot_size: int
) -> None:
    head = struct.pack("<8sIIQ", b"SESSLOTS", 1, 4096, slot_size)
    path = tmp_path / "session.slots"
    path.write_bytes((head + struct.pack("<I", zlib.crc32(head))).ljust(8192, b"\0"))
    for b in both_backends(native).values():
        with pytest.raises(CorruptCheckpointError, match="bad slot size") as caught:
            b.load_slots(str(path), False)
        assert str(path) in str(caught.value)


_SAVE_WITHOUT_MEMORY: Final = """
import mmap, os, resource, sys
from sessionstore import Layout, SessionStorage
storage = SessionStorage.create(sys.argv[1], layout=Layout.SLOTTED)
# Zero pages never written: address space, but no memory.
data = mmap.mmap(-1, 512 << 20, prot=mmap.PROT_READ)
with open("/proc/self/status") as status:
    size = next(int(l.split()[1]) << 10 for l in status if l.startswith("VmSize:"))
# Room for the process, not for the 1 GiB slots of the rebuilt file.
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.RLIM_INFINITY))
try:
    storage.save_checkpoint(memoryview(data))
except MemoryError:
    print("MemoryError", os.listdir(storage.location))
"""


def test_a_rebuild_without_memory_raises_memory_error(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", _SAVE_WITHOUT_MEMORY, str(tmp_path)],
        env=backend_env,
        capture_output=True,
        text=True,
    )
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "MemoryError []\n", "")
