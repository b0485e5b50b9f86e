"""The slotted layout on both backends: the same syscalls, bytes and errors.

A child process saves under ``strace -f`` (as in ``test_syscall_conformance``)
and the calls between the two markers are compared with ``plan_slotted_save()``
step by step, for an in-place save and for both kinds of rebuild. The same
sequence of saves leaves the same bytes on disk whichever backend ran it, and
every failure raises the same error from both.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest
from backend_parity import both_backends, listing, outcome
from syscall_traces import (
    SLOTS_FILE,
    TRACED_WITH_READS,
    before_slots,
    expected_lines,
    marked_save_script,
    run_traced,
    slot_reads,
)

from sessionstore import Durability, Layout, SessionStorage, _backend
from sessionstore._save_plan import SavePlan, SaveStep, plan_slotted_save
from sessionstore._slots_format import (
    FILE_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    build_slots_file,
    decode_file_header,
    plan_slot_size,
)

_CHILD: Final = marked_save_script(
    """
from sessionstore import Durability, Layout, SessionStorage

location, durability, warm_up, *sizes = sys.argv[1:]
durability = Durability[durability]
# Saves elsewhere first (in place and rebuilt), so every import and cache is
# ready before the trace.
warm = SessionStorage(warm_up, durability=durability, layout=Layout.SLOTTED)
for size in (10, 20, 5000):
    warm.save_checkpoint(b"w" * size)
warm.load_checkpoint()
storage = SessionStorage(location, durability=durability, layout=Layout.SLOTTED)

def payload(size):
    size = int(size)
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)

*before, last = sizes
for size in before:
    storage.save_checkpoint(payload(size))
data = payload(last)
"""
)


def traced_slotted_save(
    strace: str,
    env: dict[str, str],
    tmp_path: Path,
    storage: SessionStorage,
    sizes: list[int],
) -> tuple[list[str], str]:
    """The described calls of the last of ``sizes`` saves (the others set the
    stage untraced), and the child's printed outcome."""
    warm_up = SessionStorage.create(tmp_path / "warm-up")
    args = [storage.location, storage.durability.name, warm_up.location]
    args += map(str, sizes)
    return run_traced(
        strace,
        env,
        tmp_path / "trace.txt",
        TRACED_WITH_READS,
        _CHILD,
        args,
        storage.location,
    )


def _in_place(plan: SavePlan, steps: dict[SaveStep, list[str]]) -> list[str]:
    return [line for step in plan.steps for line in steps.get(step, [])]


@pytest.mark.parametrize("durability", list(Durability))
def test_an_in_place_save_issues_the_plan_s_syscalls(
    strace: str,
    backend: str,
    backend_env: dict[str, str],
    tmp_path: Path,
    durability: Durability,
) -> None:
    storage = SessionStorage.create(
        tmp_path / "repo", durability=durability, layout=Layout.SLOTTED
    )
    plan = plan_slotted_save(durability)
    size = 3000
    slot_size = plan_slot_size(size)
    # Two saves before: slot 0 then slot 1 hold records, slot 1 the newest, so
    # this save overwrites slot 0.
    lines, outcome = traced_slotted_save(
        strace, backend_env, tmp_path, storage, [size, size, size]
    )

    assert outcome == f"{backend} saved"
    record = RECORD_HEADER_SIZE + size
    assert lines == _in_place(
        plan.in_place,
        {
            **before_slots(),
            SaveStep.READ_SLOTS: slot_reads(slot_size, 1, size),
            SaveStep.WRITE_SLOT: [
                f"pwritev2({SLOTS_FILE}, 2 parts, {record} bytes at {FILE_HEADER_SIZE})"
            ],
            SaveStep.SYNC_SLOT: [f"fdatasync({SLOTS_FILE})"],
            SaveStep.CLOSE_SLOTS: [f"close({SLOTS_FILE})"],
            SaveStep.CLOSE_DIR: ["close(dir)"],
        },
    )


@pytest.mark.parametrize("durability", list(Durability))
def test_a_record_that_does_not_fit_rebuilds_through_the_replace_sequence(
    strace: str,
    backend: str,
    backend_env: dict[str, str],
    tmp_path: Path,
    durability: Durability,
) -> None:
    storage = SessionStorage.create(
        tmp_path / "repo", durability=durability, layout=Layout.SLOTTED
    )
    plan = plan_slotted_save(durability)
    small, big = 100, 70_000
    image = build_slots_file(b"\0" * big, 2, (1, b"\0" * small))

    lines, outcome = traced_slotted_save(
        strace, backend_env, tmp_path, storage, [small, big]
    )

    assert outcome == f"{backend} saved"
    read_at = plan.in_place.steps.index(SaveStep.READ_SLOTS)
    assert lines == [
        *_in_place(
            SavePlan(plan.in_place.steps[: read_at + 1]),
            {
                **before_slots(),
                SaveStep.READ_SLOTS: slot_reads(plan_slot_size(small), 0, small),
            },
        ),
        f"close({SLOTS_FILE})",
        *expected_lines(plan.rebuild, len(image)),
    ]


@pytest.mark.parametrize("durability", list(Durability))
def test_the_first_save_builds_the_file_through_the_replace_sequence(
    strace: str,
    backend: str,
    backend_env: dict[str, str],
    tmp_path: Path,
    durability: Durability,
) -> None:
    storage = SessionStorage.create(
        tmp_path / "repo", durability=durability, layout=Layout.SLOTTED
    )
    plan = plan_slotted_save(durability)
    image = build_slots_file(b"\0" * 5000, 1, None)

    lines, outcome = traced_slotted_save(strace, backend_env, tmp_path, storage, [5000])

    assert outcome == f"{backend} saved"
    opened_at = plan.in_place.steps.index(SaveStep.OPEN_SLOTS)
    assert lines == [
        *_in_place(SavePlan(plan.in_place.steps[:opened_at]), before_slots()),
        f"openat(dir, {SLOTS_FILE}, O_CLOEXEC|O_NOATIME|O_NOFOLLOW|O_RDWR) -> ENOENT",
        *expected_lines(plan.rebuild, len(image)),
    ]


def test_a_rebuild_is_still_under_the_lock(
    strace: str,
    backend: str,
    backend_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """No close of the directory (which would release its flock) comes between
    the lock and the rename of the rebuilt file."""
    storage = SessionStorage.create(tmp_path / "repo", layout=Layout.SLOTTED)

    lines, _ = traced_slotted_save(strace, backend_env, tmp_path, storage, [10])

    locked = lines.index("flock(dir, LOCK_EX|LOCK_NB)")
    renamed = lines.index(f"renameat(dir, session.next, dir, {SLOTS_FILE})")
    assert "close(dir)" not in lines[locked:renamed]
    assert lines[-1] == "close(dir)"


def _save_all(
    chosen: _backend.Backend, location: Path, durability: Durability
) -> Iterator[bytes]:
    """A sequence of saves exercising every placement; the file after each."""
    plan = plan_slotted_save(durability)
    sizes = [0, 5, 3000, 4064, 4065, 100, 70_000, 1, 200_000, 7, 7]
    for i, size in enumerate(sizes):
        data = bytes((i * 31 + k) % 251 for k in range(size))
        view: bytes | bytearray | memoryview = data
        if i % 3 == 1:
            view = bytearray(data)
        elif i % 3 == 2:
            view = memoryview(data)
        chosen.save_slotted(
            str(location), view, plan.in_place.codes, plan.rebuild.codes
        )
        yield (location / SLOTS_FILE).read_bytes()
    # A torn newest record: the next save overwrites it, not the valid one.
    image = bytearray((location / SLOTS_FILE).read_bytes())
    header = decode_file_header(bytes(image))
    image[header.slot_offset(0) + RECORD_HEADER_SIZE] ^= 0xFF
    (location / SLOTS_FILE).write_bytes(bytes(image))
    chosen.save_slotted(
        str(location), b"after", plan.in_place.codes, plan.rebuild.codes
    )
    yield (location / SLOTS_FILE).read_bytes()


@pytest.mark.parametrize("durability", list(Durability))
def test_both_backends_write_the_same_bytes(
    native: _backend.Backend, tmp_path: Path, durability: Durability
) -> None:
    images = {}
    for name, chosen in both_backends(native).items():
        (tmp_path / name).mkdir()
        images[name] = list(_save_all(chosen, tmp_path / name, durability))
    assert len(images["python"]) == 12
    assert images["native"] == images["python"]


def test_each_backend_reads_what_the_other_wrote(
    native: _backend.Backend, tmp_path: Path
) -> None:
    plan = plan_slotted_save()
    for writer, reader in [(native, _backend.PYTHON), (_backend.PYTHON, native)]:
        location = tmp_path / writer.name
        location.mkdir()
        payloads = [os.urandom(n) for n in (1, 4000, 9000, 50)]
        for data in payloads:
            writer.save_slotted(
                str(location), data, plan.in_place.codes, plan.rebuild.codes
            )
            assert reader.load_slots(str(location / SLOTS_FILE), False) == data
        assert reader.load_slots(str(location / SLOTS_FILE), True) == payloads[-2]


_DURABLE: Final = plan_slotted_save(Durability.FULL)


def _slots_with(image: bytes) -> Callable[[Path], tuple[str, bytes]]:
    def case(session: Path) -> tuple[str, bytes]:
        (session / SLOTS_FILE).write_bytes(image)
        return str(session), _DURABLE.in_place.codes

    return case


def _prepared(
    files: dict[str, bytes | None],
    location: str = "",
    codes: bytes = _DURABLE.in_place.codes,
) -> Callable[[Path], tuple[str, bytes]]:
    """A case: ``files`` made in the session (None: a directory), then a save
    with ``codes`` into ``location`` within it (the session itself when empty)."""

    def case(session: Path) -> tuple[str, bytes]:
        for name, content in files.items():
            if content is None:
                (session / name).mkdir()
            else:
                (session / name).write_bytes(content)
        return str(session / location) if location else str(session), codes

    return case


def _exhausted() -> bytes:
    image = bytearray(build_slots_file(b"x", 1, None))
    image[FILE_HEADER_SIZE + 8 : FILE_HEADER_SIZE + 16] = (2**64 - 1).to_bytes(
        8, "little"
    )
    return bytes(image)


_SAVE_CASES: Final[dict[str, Callable[[Path], tuple[str, bytes]]]] = {
    "missing-dir": _prepared({}, "gone"),
    "location-is-a-file": _prepared({"file": b""}, "file"),
    "leftover-next": _prepared({"session.next": b"partial"}),
    "replace-layout": _prepared({"session": b"old"}),
    "not-a-slots-file": _slots_with(b"\0" * 12_288),
    "empty-slots-file": _slots_with(b""),
    "another-magic": _slots_with(
        build_slots_file(b"x", 1, None).replace(b"SESSLOTS", b"SESSLOTZ", 1)
    ),
    "sequences-exhausted": _slots_with(_exhausted()),
    "unknown-step": _prepared({}, codes=_DURABLE.in_place.codes[:2] + b"\x2a"),
    "write-before-read": _prepared(
        {SLOTS_FILE: build_slots_file(b"x", 1, None)},
        codes=bytes([SaveStep.OPEN_DIR, SaveStep.OPEN_SLOTS, SaveStep.WRITE_SLOT]),
    ),
    "nul-in-location": _prepared({}, "a\0b"),
    "unwritable-dir": lambda session: ("/sys/kernel", _DURABLE.in_place.codes),
    "relative-location": lambda session: (
        os.path.relpath(session),
        _DURABLE.in_place.codes,
    ),
    "slots-is-a-directory": _prepared({SLOTS_FILE: None}),
}


def _same_up_to_the_session(
    result: tuple[object, ...], name: str
) -> tuple[object, ...]:
    return tuple(
        part.replace(f"/{name}", "/<session>") if isinstance(part, str) else part
        for part in result
    )


@pytest.mark.parametrize("case", list(_SAVE_CASES))
def test_both_backends_fail_a_save_alike(
    native: _backend.Backend, tmp_path: Path, case: str
) -> None:
    outcomes = {}
    for name, chosen in both_backends(native).items():
        session = tmp_path / name
        session.mkdir()
        location, codes = _SAVE_CASES[case](session)
        result = outcome(
            chosen.save_slotted, location, b"data", codes, _DURABLE.rebuild.codes
        )
        outcomes[name] = (_same_up_to_the_session(result, name), listing(session))
    assert outcomes["native"] == outcomes["python"]
    if case == "relative-location":
        assert outcomes["python"] == (("returned", None), [SLOTS_FILE])
    else:
        assert outcomes["python"][0][0] != "returned"


def test_a_held_lock_fails_alike(native: _backend.Backend, tmp_path: Path) -> None:
    outcomes = []
    for chosen in both_backends(native).values():
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            outcomes.append(
                outcome(
                    chosen.save_slotted,
                    str(tmp_path),
                    b"x",
                    _DURABLE.in_place.codes,
                    _DURABLE.rebuild.codes,
                )
            )
        finally:
            os.close(fd)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][:2] == (outcomes[0][0], errno.EWOULDBLOCK)
    assert listing(tmp_path) == []


def _torn(*slots: int) -> bytes:
    """Two records (``new`` in slot 0, ``old`` in slot 1), ``slots`` damaged."""
    image = bytearray(build_slots_file(b"new", 2, (1, b"old")))
    for slot in slots:
        image[FILE_HEADER_SIZE + slot * 4096 + RECORD_HEADER_SIZE] ^= 1
    return bytes(image)


_LOAD_CASES: Final[dict[str, bytes | None]] = {
    "missing": None,
    "two-records": _torn(),
    "one-record": build_slots_file(b"only", 1, None),
    "newest-torn": _torn(0),
    "older-torn": _torn(1),
    "both-torn": _torn(0, 1),
    "truncated": build_slots_file(b"new" * 900, 2, (1, b"old"))[: 4096 + 1000],
    "not-a-slots-file": b"\0" * 12_288,
    "short": b"SESSLOTS",
}


@pytest.mark.parametrize("previous", [False, True])
@pytest.mark.parametrize("case", list(_LOAD_CASES))
def test_both_backends_load_alike(
    native: _backend.Backend, tmp_path: Path, case: str, previous: bool
) -> None:
    image = _LOAD_CASES[case]
    path = tmp_path / SLOTS_FILE
    if image is not None:
        path.write_bytes(image)
    outcomes = [
        outcome(chosen.load_slots, str(path), previous)
        for chosen in both_backends(native).values()
    ]
    assert outcomes[0] == outcomes[1]


def test_a_directory_is_not_a_slots_file_on_either_backend(
    native: _backend.Backend, tmp_path: Path
) -> None:
    outcomes = [
        outcome(chosen.load_slots, str(tmp_path), False)
        for chosen in both_backends(native).values()
    ]
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][:2] == (IsADirectoryError, errno.EISDIR)


def test_an_in_place_save_lets_another_thread_run(
    native: _backend.Backend, tmp_path: Path
) -> None:
    """While a durable in-place save runs, a second thread sees its record.

    The new record is on disk only once the save has written it, and the save
    flushes after that; a thread that reads the record while the caller has
    not yet returned ran during the call, which it can only with the GIL
    released.
    """
    plan = plan_slotted_save()
    location = str(tmp_path)
    size = 16 << 20
    save = native.save_slotted
    save(location, b"\x01" * size, plan.in_place.codes, plan.rebuild.codes)
    save(location, b"\x02" * size, plan.in_place.codes, plan.rebuild.codes)
    fd = os.open(tmp_path / SLOTS_FILE, os.O_RDONLY)
    header = decode_file_header(os.pread(fd, FILE_HEADER_SIZE, 0))
    returned = threading.Event()
    seen = threading.Event()

    def watch(at: int, wanted: bytes) -> None:
        """Look for the record header's sequence and length until the call returns."""
        while True:
            finished = returned.is_set()
            if os.pread(fd, 16, at) == wanted:
                if not finished:
                    seen.set()
                return
            if finished:
                return

    try:
        # Saves 1 (the rebuild) and 2 are done; save n goes to slot (n - 1) % 2.
        for sequence in range(3, 23):
            at = header.slot_offset((sequence - 1) % 2) + 8
            wanted = sequence.to_bytes(8, "little") + size.to_bytes(8, "little")
            returned.clear()
            watcher = threading.Thread(target=watch, args=(at, wanted))
            watcher.start()
            data = bytes([sequence]) * size
            save(location, data, plan.in_place.codes, plan.rebuild.codes)
            returned.set()
            watcher.join()
            if seen.is_set():
                break
    finally:
        os.close(fd)
    assert seen.is_set()


_NOBODY: Final = 65534


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another user: needs root")
def test_a_writer_who_does_not_own_the_slots_file_still_saves_in_place(
    backend: str,
) -> None:
    """Only the owner may open with O_NOATIME; anyone else allowed to write the
    file opens it without (the EPERM retry) and saves in place all the same."""
    # Outside pytest's own temporary directories, which only root may enter.
    base = Path(tempfile.mkdtemp(prefix="sessionstore-other-user-"))
    try:
        base.chmod(0o755)
        storage = SessionStorage.create(base, layout=Layout.SLOTTED)
        storage.save_checkpoint(b"saved by root")
        Path(storage.location).chmod(0o777)
        Path(storage.paths.slots).chmod(0o666)
        inode = os.stat(storage.paths.slots).st_ino
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            status = 1
            try:
                os.setuid(_NOBODY)
                storage.save_checkpoint(b"saved by another user")
                status = 0
            except BaseException as exc:
                print(f"save as uid {_NOBODY} failed: {exc!r}", file=sys.stderr)
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the save as nobody failed"
        assert os.stat(storage.paths.slots).st_ino == inode
        assert storage.load_checkpoint() == b"saved by another user"
        assert storage.load_previous() == b"saved by root"
    finally:
        shutil.rmtree(base)
