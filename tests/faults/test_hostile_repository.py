"""A repository under hostile conditions: what a listing reports, what a prune removes.

Each situation is made for real (a FIFO, a symlink, another user's private
session, a sparse file claiming gigabytes, a PID namespace) and run on both
backends; the CLI runs in a child process with a timeout wherever a hang is
what the test guards against.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import forked
from session_age import date_session
from sessionstore import (
    CheckpointStatus,
    Layout,
    LockState,
    SessionStorage,
    SessionStorageRepository,
    _backend,
)
from sessionstore._naming import NEXT_NAME, SLOTS_NAME, plan_tombstone_name
from sessionstore._repository import describe
from sessionstore._slots_format import (
    FILE_HEADER_SIZE,
    FORMAT_VERSION,
    RECORD_MAGIC,
    encode_file_header,
)
from sessionstore._terminal import printable

DAY_NS = 86_400 * 10**9
# Generous for a loaded machine; a hang never ends, so any bound tells it apart.
TIMEOUT = 60


def now_ns() -> int:
    return int(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1e9)


def make(
    repo: Path,
    data: bytes | None = b"x",
    *,
    age_days: float = 10,
    slotted: bool = False,
) -> SessionStorage:
    layout = Layout.SLOTTED if slotted else Layout.REPLACE
    storage = SessionStorage.create(repo, layout=layout)
    if data is not None:
        storage.save_checkpoint(data)
    date_session(storage.location, now_ns() - int(age_days * DAY_NS))
    return storage


def cli(env: dict[str, str], *argv: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed command run as a user runs it, killed if it hangs."""
    return subprocess.run(
        [sys.executable, "-m", "sessionstore", *map(str, argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


# -- prune removes only what it recognises, and says so ---------------------


def test_prune_leaves_a_directory_that_is_not_a_session(
    backend: str, tmp_path: Path
) -> None:
    notes = tmp_path / "my-notes.session"
    notes.mkdir()
    (notes / "notes.txt").write_bytes(b"precious")
    (notes / "session").write_bytes(b"not ours either")
    date_session(notes, now_ns() - 30 * DAY_NS)
    session = make(tmp_path)
    repo = SessionStorageRepository(tmp_path)
    by_id = {i.id: i for i in repo.scan()}
    assert by_id["my-notes"].unrecognised == ("notes.txt",)
    assert not by_id["my-notes"].recognised
    assert by_id[session.id].recognised
    assert [i.id for i in repo.prune(keep=0, dry_run=True)] == [session.id]
    assert [i.id for i in repo.prune(keep=0)] == [session.id]
    assert (notes / "notes.txt").read_bytes() == b"precious"


def test_a_client_layout_is_recognised_and_pruned(backend: str, tmp_path: Path) -> None:
    """plainbox and Checkbox keep job logs and a share beside the checkpoint."""
    session = make(tmp_path)
    for name in ("io-logs", "session-share", "CHECKBOX_DATA"):
        Path(session.location, name).mkdir()
        Path(session.location, name, "job.log").write_bytes(b"log")
    (info,) = SessionStorageRepository(tmp_path).prune(keep=0)
    assert info.location == session.location
    assert not os.path.lexists(session.location)


def test_a_library_name_of_the_wrong_type_is_not_recognised(
    backend: str, tmp_path: Path
) -> None:
    odd = make(tmp_path, None)
    Path(odd.location, "io-logs").write_bytes(b"a file where a directory belongs")
    (info,) = SessionStorageRepository(tmp_path).scan()
    assert info.unrecognised == ("io-logs",)
    assert SessionStorageRepository(tmp_path).prune(keep=0) == []


def test_prune_reports_the_leftovers_it_finishes_dry_run_too(
    backend: str, tmp_path: Path
) -> None:
    ours = tmp_path / plan_tombstone_name("pbox-gone.session", "0123abcd")
    ours.mkdir()
    (ours / "session").write_bytes(b"half removed")
    # Hidden directories that merely look like tombstones are not ours.
    theirs = [
        tmp_path / ".backup.removing-notes",  # not eight hex digits
        tmp_path / ".pbox-x.session.removing-0123ABCD",  # not lowercase
    ]
    foreign = tmp_path / plan_tombstone_name("pbox-y.session", "feedf00d")
    for path in [*theirs, foreign]:
        path.mkdir()
        (path / "session").write_bytes(b"")
    (foreign / "thesis.tex").write_bytes(b"precious")
    repo = SessionStorageRepository(tmp_path)
    (planned,) = repo.prune(keep=5, dry_run=True)
    assert planned.leftover
    assert planned.location == str(ours)
    assert ours.exists()
    (removed,) = repo.prune(keep=5)
    assert removed.leftover
    assert removed.id == "pbox-gone"
    assert not ours.exists()
    assert all(path.exists() for path in [*theirs, foreign])
    assert (foreign / "thesis.tex").read_bytes() == b"precious"


def test_cli_prune_prints_the_leftovers_in_a_dry_run(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    ours = tmp_path / plan_tombstone_name("pbox-gone.session", "0123abcd")
    ours.mkdir()
    done = cli(backend_env, "prune", "--keep", "5", "--dry-run", "--repo", tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"would remove {ours.name}  (leftover of an interrupted removal)" in (
        done.stdout.splitlines()
    )
    assert ours.exists()


# -- one odd entry is reported; the rest is listed and pruned ---------------


def odd_repository(repo: Path) -> dict[str, SessionStorage]:
    """A good session beside every odd checkpoint a repository may hold."""
    sessions = {
        "good": make(repo, b"good", age_days=20),
        "fifo-slots": make(repo, None),
        "fifo-session": make(repo, None),
        "link-slots": make(repo, None),
        "dir-slots": make(repo, None),
        "torn-slots": make(repo, None),
        "never": make(repo, None),
    }
    os.mkfifo(Path(sessions["fifo-slots"].location, SLOTS_NAME))
    os.mkfifo(Path(sessions["fifo-session"].location, "session"))
    Path(sessions["link-slots"].location, SLOTS_NAME).symlink_to(
        Path(sessions["good"].location, "session")
    )
    Path(sessions["dir-slots"].location, SLOTS_NAME).mkdir()
    Path(sessions["torn-slots"].location, SLOTS_NAME).write_bytes(b"\0" * 8192)
    for storage in sessions.values():
        date_session(storage.location, now_ns() - 10 * DAY_NS)
    date_session(sessions["good"].location, now_ns() - 20 * DAY_NS)
    return sessions


def test_odd_checkpoints_are_reported_each_for_itself(
    backend: str, tmp_path: Path
) -> None:
    sessions = odd_repository(tmp_path)
    by_location = {i.location: i for i in SessionStorageRepository(tmp_path).scan()}
    seen = {
        name: (
            by_location[s.location].checkpoint,
            by_location[s.location].checkpoint_size,
            by_location[s.location].problem,
        )
        for name, s in sessions.items()
    }
    assert seen == {
        "good": (CheckpointStatus.SAVED, 4, None),
        "fifo-slots": (CheckpointStatus.UNREADABLE, None, "session.slots is a FIFO"),
        "fifo-session": (CheckpointStatus.UNREADABLE, None, "session is a FIFO"),
        "link-slots": (
            CheckpointStatus.UNREADABLE,
            None,
            "session.slots is a symlink",
        ),
        "dir-slots": (
            CheckpointStatus.UNREADABLE,
            None,
            "session.slots is a directory",
        ),
        "torn-slots": (
            CheckpointStatus.DAMAGED,
            None,
            "session.slots: no record with a whole header lies within the file",
        ),
        "never": (CheckpointStatus.NEVER_SAVED, None, None),
    }


def test_prune_goes_on_past_odd_entries(backend: str, tmp_path: Path) -> None:
    sessions = odd_repository(tmp_path)
    removed = SessionStorageRepository(tmp_path).prune(keep=0)
    # FIFOs, symlinks and directories where a file belongs are no files of the
    # library's: those sessions are left for a person to look at.
    assert {i.location for i in removed} == {
        sessions[name].location for name in ("good", "torn-slots", "never")
    }
    assert os.path.islink(Path(sessions["link-slots"].location, SLOTS_NAME))


@pytest.mark.parametrize("command", ["list", "list --json", "show", "prune"])
def test_no_command_blocks_on_a_fifo_and_each_odd_session_gets_a_row(
    backend_env: dict[str, str], tmp_path: Path, command: str
) -> None:
    sessions = odd_repository(tmp_path)
    argv = command.split()
    if command == "show":
        argv.append(sessions["fifo-slots"].id)
    if command == "prune":
        argv += ["--keep", "0"]
    done = cli(backend_env, *argv, "--repo", tmp_path)
    assert done.returncode == 0, done.stderr
    if command == "list":
        rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:-1]}
        assert "UNREADABLE" in rows[sessions["fifo-slots"].id]
        assert "session.slots is a FIFO" in rows[sessions["fifo-slots"].id]
        assert "DAMAGED" in rows[sessions["torn-slots"].id]
        assert len(rows) == len(sessions)
    elif command == "list --json":
        listed = {e["id"]: e for e in json.loads(done.stdout)}
        assert listed[sessions["fifo-session"].id]["checkpoint"] == "unreadable"
        assert listed[sessions["torn-slots"].id]["checkpoint"] == "damaged"
        assert listed[sessions["never"].id]["checkpoint"] == "never saved"
    elif command == "show":
        assert "unreadable" in done.stdout
        assert "session.slots is a FIFO" in done.stdout
    else:
        assert done.stdout.splitlines()[-1].startswith("removed 3 sessions")


def test_a_damaged_slotted_checkpoint_never_shows_as_never_saved(
    backend_env: dict[str, str], backend: str, tmp_path: Path
) -> None:
    torn_data = make(tmp_path, b"a" * 5000, slotted=True)
    torn_header = make(tmp_path, b"b" * 5000, slotted=True)
    with open(Path(torn_data.location, SLOTS_NAME), "r+b") as slots:
        slots.seek(FILE_HEADER_SIZE + 100)
        slots.write(b"garbage")  # the record's data: its checksum fails
    with open(Path(torn_header.location, SLOTS_NAME), "r+b") as slots:
        slots.seek(FILE_HEADER_SIZE)
        slots.write(b"\0" * 32)  # the record's header
    for storage in (torn_data, torn_header):
        done = cli(backend_env, "show", "--json", storage.id, "--repo", tmp_path)
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert shown["checkpoint"] == "damaged"
        assert shown["checkpoint_size"] is None
        text = cli(backend_env, "show", storage.id, "--repo", tmp_path).stdout
        assert "none saved" not in text
        assert "damaged" in text
    listed = cli(backend_env, "list", "--repo", tmp_path).stdout
    assert "DAMAGED" in listed


def test_show_verifies_the_file_a_load_reads(backend: str, tmp_path: Path) -> None:
    """Between two steps of a conversion a session holds both files; a load
    reads ``session`` then, so a torn ``session.slots`` beside it is no damage."""
    storage = make(tmp_path, b"whole")
    Path(storage.location, SLOTS_NAME).write_bytes(b"\0" * 8192)
    info = describe(storage.location)
    assert (info.checkpoint, info.checkpoint_size) == (CheckpointStatus.SAVED, 5)
    assert storage.load_checkpoint() == b"whole"


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another user: needs root")
def test_an_unreadable_slots_file_is_reported_as_unreadable(backend: str) -> None:
    with forked.shared_directory() as base:
        repo = base / "repo"
        good = make(repo, b"good")
        locked_away = make(repo, b"12345", slotted=True)
        for storage in (good, locked_away):
            Path(storage.location).chmod(0o755)
        Path(good.location, "session").chmod(0o644)
        Path(locked_away.location, SLOTS_NAME).chmod(0o600)
        repo.chmod(0o755)

        def scan() -> str:
            return "\n".join(
                f"{i.id} {i.checkpoint.value} {i.problem}"
                for i in SessionStorageRepository(repo).scan()
            )

        assert sorted(forked.as_nobody(scan).splitlines()) == [
            f"{i.id} {status}"
            for i, status in sorted(
                [
                    (good, "saved None"),
                    (locked_away, "unreadable session.slots: Permission denied"),
                ],
                key=lambda pair: pair[0].id,
            )
        ]


def test_both_backends_scan_an_odd_repository_alike(tmp_path: Path) -> None:
    odd_repository(tmp_path)
    notes = tmp_path / "notes.session"
    notes.mkdir()
    (notes / "todo").write_bytes(b"")
    (notes / "sub").mkdir()
    os.symlink("nowhere", notes / "dangling")
    grave = tmp_path / plan_tombstone_name("pbox-old.session", "0123abcd")
    grave.mkdir()
    (grave / NEXT_NAME).write_bytes(b"")
    location = str(tmp_path)
    native = _backend.load_native().scan_sessions(location)
    assert native == _backend.PYTHON.scan_sessions(location)
    assert native is not None
    assert (len(native[0]), len(native[1])) == (8, 1)


# -- the listing reads headers, not records --------------------------------


def sparse_slots_claiming(session: str, length: int) -> None:
    """A ``session.slots`` whose one record header claims ``length`` bytes, the
    file extended (sparse) to hold them: a valid file header, no data."""
    slot_size = 1 << (length + 4096).bit_length()
    path = Path(session, SLOTS_NAME)
    with open(path, "wb") as slots:
        slots.write(encode_file_header(slot_size))
        header = struct.pack("<4sIQQI", RECORD_MAGIC, FORMAT_VERSION, 1, length, 0)
        slots.write(header + struct.pack("<I", 0))
        slots.truncate(FILE_HEADER_SIZE + 2 * slot_size)


def test_a_sparse_slots_file_claiming_8_gib_is_listed_from_its_header(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    """With the address space capped at 1 GiB, a listing or prune that read the
    claimed record would fail; one that reads headers answers at once."""
    claimed = 8 << 30
    huge = make(tmp_path, None)
    sparse_slots_claiming(huge.location, claimed)
    date_session(huge.location, now_ns() - 10 * DAY_NS)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, resource.RLIM_INFINITY))\n"
        "from sessionstore._cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    for argv in (["list", "--json"], ["prune", "--keep", "0", "--dry-run"]):
        done = subprocess.run(
            [sys.executable, "-c", code, *argv, "--repo", str(tmp_path)],
            env=backend_env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
        if argv[0] == "list":
            (entry,) = json.loads(done.stdout)
            assert entry["checkpoint_size"] == claimed
            assert entry["checkpoint"] == "saved"


# -- names printed for terminals -------------------------------------------

HOSTILE = "pbox-\x1b]0;owned\x07\x1b[2J\nremoved everything  (x)\u202e.session"


def test_printable_escapes_everything_a_terminal_obeys() -> None:
    assert printable("plain name-1.session") == "plain name-1.session"
    assert printable("a\nb\tc\\d") == "a\\nb\\tc\\\\d"
    assert printable("\x1b[2J\x07\x7f\x9b") == "\\x1b[2J\\x07\\x7f\\x9b"
    assert printable("\u202e\u2028") == "\\u202e\\u2028"
    assert printable(os.fsdecode(b"caf\xe9")) == "caf\\xe9"
    assert printable("é ü 漢") == "é ü 漢"


@pytest.mark.parametrize(
    "command", ["list", "show", "prune", "break-lock", "doctor", "missing-show"]
)
def test_a_hostile_name_cannot_reach_the_terminal(
    backend_env: dict[str, str], tmp_path: Path, command: str
) -> None:
    repo = tmp_path / "repo\x1b[2J\x07"
    session = repo / HOSTILE
    session.mkdir(parents=True)
    (session / "session").write_bytes(b"x")
    (session / NEXT_NAME).write_bytes(b"")
    date_session(session, now_ns() - 10 * DAY_NS)
    ident = HOSTILE.removesuffix(".session")
    argv = {
        "list": ["list"],
        "show": ["show", ident],
        "prune": ["prune", "--keep", "0"],
        "break-lock": ["break-lock", ident],
        "doctor": ["doctor"],  # names the session with a stale lock
        "missing-show": ["show", "no-such-session"],
    }[command]
    done = cli(backend_env, *argv, "--repo", repo)
    for stream in (done.stdout, done.stderr):
        assert not {"\x1b", "\x07", "\u202e"} & set(stream)
        assert not any(
            line.startswith("removed everything") for line in stream.splitlines()
        )
    if command == "missing-show":
        assert "repo\\x1b[2J\\x07" in done.stderr
    else:
        escaped = "\\x1b]0;owned\\x07\\x1b[2J\\nremoved everything"
        assert escaped in done.stdout


# -- a session's age is its last checkpoint's ------------------------------


def test_breaking_a_stale_lock_does_not_make_a_session_younger(
    backend: str, tmp_path: Path
) -> None:
    old = make(tmp_path, b"old", age_days=6 / 24)
    young = make(tmp_path, b"young", age_days=1 / 24)
    Path(old.location, NEXT_NAME).write_bytes(b"half")
    date_session(old.location, now_ns() - 6 * 3600 * 10**9)
    repo = SessionStorageRepository(tmp_path)
    before = {i.id: i.modified for i in repo.scan()}
    assert old.break_stale_lock()
    after = repo.scan()
    assert [i.id for i in after] == [young.id, old.id]
    assert {i.id: i.modified for i in after} == before
    assert [i.id for i in repo.prune(keep=1)] == [old.id]


def test_a_slotted_session_is_as_old_as_its_last_in_place_save(
    backend: str, tmp_path: Path
) -> None:
    storage = make(tmp_path, b"first", slotted=True, age_days=3)
    storage.save_checkpoint(b"second")  # in place: the directory is untouched
    (info,) = SessionStorageRepository(tmp_path).scan()
    age = datetime.datetime.now(datetime.timezone.utc) - info.modified
    assert age < datetime.timedelta(hours=1)
    assert os.stat(storage.location).st_mtime_ns < now_ns() - 2 * DAY_NS


# -- long names are removed -----------------------------------------------


def test_a_session_with_the_longest_name_is_removed_and_pruned(
    backend: str, tmp_path: Path
) -> None:
    names = ["p" * 247 + ".session", "é" * 123 + "x.session"]
    for name in names:
        assert len(os.fsencode(name)) == 255
        Path(tmp_path, name).mkdir()
        Path(tmp_path, name, "session").write_bytes(b"x")
        date_session(tmp_path / name, now_ns() - 10 * DAY_NS)
    SessionStorage(str(tmp_path / names[0])).remove()
    assert not (tmp_path / names[0]).exists()
    (pruned,) = SessionStorageRepository(tmp_path).prune(keep=0)
    assert pruned.location == str(tmp_path / names[1])
    assert os.listdir(tmp_path) == []


def test_the_tombstone_of_a_long_name_is_recognised_as_a_leftover(
    backend: str, tmp_path: Path
) -> None:
    name = plan_tombstone_name("q" * 250 + ".session", "0123abcd")
    assert len(os.fsencode(name)) == 255
    Path(tmp_path, name).mkdir()
    (leftover,) = SessionStorageRepository(tmp_path).prune(keep=0)
    assert leftover.leftover
    assert not (tmp_path / name).exists()


# -- a lock this process cannot see is not UNLOCKED -------------------------


def test_lock_state_in_another_pid_namespace_sees_a_holder_it_cannot_see(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a new PID namespace needs root and unshare(1)")
    storage = make(tmp_path, b"x")
    probe = (
        "import sys\n"
        "from sessionstore import SessionStorage, SessionStorageRepository\n"
        "locks = open('/proc/locks').read()\n"
        "state = SessionStorage(sys.argv[1]).lock_state().value\n"
        "(info,) = SessionStorageRepository(sys.argv[2]).scan()\n"
        "print(state, info.lock.value, len(locks.splitlines()))\n"
    )
    command = [
        "unshare", "--pid", "--fork", "--mount-proc",
        sys.executable, "-c", probe, storage.location, str(tmp_path),
    ]  # fmt: skip
    fd = os.open(storage.location, os.O_RDONLY | os.O_DIRECTORY)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = subprocess.run(
            command, env=backend_env, capture_output=True, text=True, timeout=TIMEOUT
        )
    finally:
        os.close(fd)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"unshare does not work here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    state, scanned, table_lines = done.stdout.split()
    # The namespace's lock table does not show this process's lock...
    assert table_lines == "0"
    # ...and the probe does not take that for a free lock.
    assert (state, scanned) == (LockState.HELD.value, LockState.HELD.value)
    after = subprocess.run(
        command, env=backend_env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert after.stdout.split()[:2] == ["unlocked", "unlocked"]
