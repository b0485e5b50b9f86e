"""The ``sessionstore`` command line, driven in process and once as a real program."""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import filesystems
from session_age import date_session
from sessionstore import SessionStorage, SessionStorageRepository
from sessionstore._cli import main, parse_duration, parse_size
from sessionstore._naming import NEXT_NAME
from sessionstore._units import format_size

DAY_NS = 86_400 * 10**9


def make(
    repo: Path, data: bytes | None = b"checkpoint", *, age_days: int = 0
) -> SessionStorage:
    storage = SessionStorage.create(repo)
    if data is not None:
        storage.save_checkpoint(data)
    now_ns = int(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1e9)
    date_session(storage.location, now_ns - age_days * DAY_NS)
    return storage


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    """The one line a usage mistake prints; the exit status must be 2."""
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert exited.value.code == 2
    assert out == ""
    assert err.count("\n") == 1
    return err


def test_list_prints_a_table_youngest_first(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = make(tmp_path, b"x" * 2048, age_days=2)
    young = make(tmp_path, None, age_days=1)
    status, out, err = run(capsys, "list", "--repo", tmp_path)
    assert (status, err) == (0, "")
    header, first, second, footer = out.splitlines()
    assert header.split() == ["ID", "MODIFIED", "(UTC)", "SIZE", "LOCK"]
    assert first.split()[0] == young.id
    assert first.split()[-2:] == ["-", "unlocked"]
    assert second.split()[0] == old.id
    assert second.split()[-3:] == ["2", "KiB", "unlocked"]
    assert footer == f"2 sessions, 2 KiB of checkpoints, in {tmp_path}"


def test_list_json_is_the_scan(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make(tmp_path, b"abc", age_days=1)
    stale = make(tmp_path, None)
    Path(stale.location, NEXT_NAME).write_bytes(b"")
    status, out, _ = run(capsys, "list", "--json", "--repo", tmp_path)
    assert status == 0
    listed = json.loads(out)
    infos = SessionStorageRepository(tmp_path).scan()
    assert listed == [
        {
            "id": i.id,
            "location": i.location,
            "modified": i.modified.isoformat(),
            "checkpoint_size": i.checkpoint_size,
            "lock": i.lock.value,
            "checkpoint": i.checkpoint.value,
            "problem": i.problem,
            "unrecognised": list(i.unrecognised),
            "holder": None,
        }
        for i in infos
    ]
    assert [e["lock"] for e in listed] == ["stale", "unlocked"]
    assert datetime.datetime.fromisoformat(listed[0]["modified"]) == infos[0].modified


def test_list_of_a_missing_repository_is_empty(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    assert run(capsys, "list", "--json", "--repo", missing) == (0, "[]\n", "")
    status, out, err = run(capsys, "list", "--repo", missing)
    assert (status, err) == (0, "")
    assert out.splitlines()[0].split()[0] == "ID"
    assert out.splitlines()[1] == f"0 sessions, 0 B of checkpoints, in {missing}"


def test_list_uses_the_default_location(
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = make(tmp_path / "default")
    monkeypatch.setenv("PLAINBOX_SESSION_REPOSITORY", str(tmp_path / "default"))
    status, out, _ = run(capsys, "list", "--json")
    assert status == 0
    assert [e["id"] for e in json.loads(out)] == [storage.id]


def test_show_prints_the_details(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = make(tmp_path, b"12345")
    status, out, _ = run(capsys, "show", storage.id, "--repo", tmp_path)
    assert status == 0
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["id"] == storage.id
    assert fields["location"] == storage.location
    assert fields["checkpoint"] == "5 bytes (5 B)"
    assert fields["lock"] == "unlocked"
    status, out, _ = run(capsys, "show", "--json", storage.id, "--repo", tmp_path)
    assert json.loads(out)["checkpoint_size"] == 5


def test_an_id_may_be_the_directory_name_or_a_unique_start(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = make(tmp_path)
    for ident in (storage.id, storage.id + ".session", storage.id[:-3]):
        status, out, _ = run(capsys, "show", "--json", ident, "--repo", tmp_path)
        assert (status, json.loads(out)["id"]) == (0, storage.id)


@pytest.mark.parametrize("command", ["show", "cat", "break-lock"])
@pytest.mark.parametrize(
    ("ident", "message"),
    [
        ("nope", "no session 'nope' in"),
        ("pbox-", "is the start of 2 session ids"),
        ("../escape", "not a session id"),
        (".hidden", "not a session id"),
    ],
)
def test_a_bad_id_is_one_line_and_exit_1(
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    ident: str,
    message: str,
) -> None:
    make(tmp_path)
    make(tmp_path)
    status, out, err = run(capsys, command, ident, "--repo", tmp_path)
    assert (status, out) == (1, "")
    assert err.startswith(f"sessionstore {command}: ")
    assert message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", ["show", "cat", "break-lock"])
def test_a_missing_repository_is_one_line_and_exit_1(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    status, out, err = run(capsys, command, "x", "--repo", tmp_path / "missing")
    assert (status, out) == (1, "")
    assert (
        err
        == f"sessionstore {command}: no session repository at {tmp_path / 'missing'}\n"
    )


def test_cat_writes_the_checkpoint_bytes_unchanged(
    backend: str, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    data = bytes(range(256)) * 100 + b"\r\n\x00"
    storage = make(tmp_path, data)
    assert main(["cat", storage.id, "--repo", str(tmp_path)]) == 0
    assert capsysbinary.readouterr().out == data
    empty = make(tmp_path, None)
    assert main(["cat", empty.id, "--repo", str(tmp_path)]) == 0
    assert capsysbinary.readouterr().out == b""


def test_prune_dry_run_says_and_removes_nothing_then_prune_removes(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    young = make(tmp_path, age_days=1)
    old = make(tmp_path, age_days=10)
    args = ("prune", "--keep", "1", "--older-than", "7d", "--repo", tmp_path)
    status, out, _ = run(capsys, *args, "--dry-run")
    assert status == 0
    assert out.splitlines()[0].startswith(f"would remove {old.id} ")
    assert out.splitlines()[-1].endswith("(dry run: nothing was removed)")
    assert os.path.isdir(old.location)
    status, out, _ = run(capsys, *args)
    assert status == 0
    assert out.splitlines()[0].startswith(f"removed {old.id} ")
    assert out.splitlines()[-1] == f"removed 1 session from {tmp_path}"
    assert SessionStorageRepository(tmp_path).get_storage_list() == [young]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "prune needs --keep, --older-than, --max-size or several"),
        (("--keep", "-1"), "bad --keep -1"),
        (("--keep", "many"), "bad --keep 'many'"),
        (("--older-than", "7"), "bad duration '7'"),
        (("--older-than", "1y"), "bad duration '1y'"),
    ],
)
def test_prune_usage_mistakes_are_one_line_and_exit_2(
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    session = make(tmp_path, age_days=30)
    err = usage_error(capsys, "prune", *args, "--repo", tmp_path)
    assert err.startswith("sessionstore prune: error: ")
    assert message in err
    assert SessionStorageRepository(tmp_path).get_storage_list() == [session]


def test_break_lock_removes_a_stale_lock(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = make(tmp_path)
    Path(storage.location, NEXT_NAME).write_bytes(b"left over")
    status, out, _ = run(capsys, "break-lock", storage.id, "--repo", tmp_path)
    assert (status, out) == (0, f"removed the stale lock of {storage.id}\n")
    assert not os.path.exists(os.path.join(storage.location, NEXT_NAME))
    status, out, _ = run(capsys, "break-lock", storage.id, "--repo", tmp_path)
    assert (status, out) == (0, f"{storage.id} is not locked: nothing to break\n")


def test_break_lock_leaves_a_held_lock_unless_forced(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = make(tmp_path)
    next_file = Path(storage.location, NEXT_NAME)
    next_file.write_bytes(b"being written")
    fd = os.open(storage.location, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        status, out, err = run(capsys, "break-lock", storage.id, "--repo", tmp_path)
        assert (status, out) == (1, "")
        holder = f"held by pid {os.getpid()} ("
        assert holder in err
        assert "inside a save: not broken (--force removes" in err
        assert next_file.exists()
        status, out, _ = run(
            capsys, "break-lock", "--force", storage.id, "--repo", tmp_path
        )
        assert status == 0
        assert out.startswith(
            f"removed the lock file of {storage.id} (forced; it was {holder}"
        )
        assert not next_file.exists()
    finally:
        os.close(fd)


def test_bench_prints_a_table_and_leaves_nothing_behind(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(
        capsys, "bench", "--dir", tmp_path, "--sizes", "1K,4K", "--budget", "0.1"
    )
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"save latency, {backend} backend, in {tmp_path}/bench-")
    assert lines[1].split() == ["SIZE", "DURABILITY", "SAVES", "MEDIAN", "P90"]
    cells = [line.split()[:3] for line in lines[2:]]
    assert cells == [
        ["1", "KiB", "full"],
        ["1", "KiB", "none"],
        ["4", "KiB", "full"],
        ["4", "KiB", "none"],
    ]
    assert os.listdir(tmp_path) == []


def test_bench_json_prints_one_object_per_row_and_nothing_else(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(
        capsys,
        "bench",
        "--dir",
        tmp_path,
        "--sizes",
        "1K,4K",
        "--budget",
        "0.05",
        "--json",
    )
    assert (status, err) == (0, "")
    rows = json.loads(out)
    assert [(r["size"], r["durability"]) for r in rows] == [
        (1024, "full"),
        (1024, "none"),
        (4096, "full"),
        (4096, "none"),
    ]
    for row in rows:
        assert set(row) == {
            "size",
            "durability",
            "saves",
            "median_seconds",
            "p90_seconds",
        }
        assert row["saves"] > 0
        assert 0 < row["median_seconds"] <= row["p90_seconds"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("sizes", ["2G", "1K,99999999999G", "1073741825"])
def test_a_bench_size_over_1g_is_a_usage_error(
    sizes: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(capsys, "bench", "--dir", tmp_path, "--sizes", sizes)
    assert "bench measures up to 1G" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", [("list",), ("prune", "--keep", "1"), ("bench",)])
def test_an_empty_repository_path_is_a_usage_error(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(capsys, *command, "--repo", "")
    assert "bad path '': give the repository's path" in err


def test_bench_defaults_to_a_temporary_session_in_the_repository(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = make(tmp_path)
    status, out, _ = run(
        capsys, "bench", "--sizes", "1", "--budget", "0.05", "--repo", tmp_path
    )
    assert status == 0
    assert out.startswith(f"save latency, {backend} backend, in {tmp_path}/bench-")
    assert SessionStorageRepository(tmp_path).get_storage_list() == [kept]


def test_bench_removes_the_repository_it_had_to_make(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "cache" / "plainbox" / "sessions"
    status, _, _ = run(
        capsys, "bench", "--sizes", "1", "--budget", "0.01", "--repo", repo
    )
    assert status == 0
    assert os.listdir(tmp_path) == []


def test_bench_in_a_missing_directory_is_one_line_and_exit_1(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, "bench", "--dir", tmp_path / "missing")
    assert status == 1
    assert err == f"sessionstore bench: no directory {tmp_path / 'missing'}\n"


def test_an_os_error_is_one_line_and_exit_1(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    status, _, err = run(capsys, "list", "--repo", loop)
    assert status == 1
    assert err == f"sessionstore list: Too many levels of symbolic links: {loop}\n"


@pytest.mark.parametrize(
    "command",
    [
        (),
        ("list",),
        ("show",),
        ("cat",),
        ("prune",),
        ("break-lock",),
        ("bench",),
        ("doctor",),
    ],
)
def test_every_command_has_help(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sessionstore")
    if command:
        assert "--repo PATH" in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert "required: COMMAND" in usage_error(capsys)


@given(st.lists(st.tuples(st.integers(0, 10**4), st.sampled_from("smhdw")), min_size=1))
def test_a_duration_is_the_sum_of_its_parts(parts: list[tuple[int, str]]) -> None:
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = "".join(f"{n}{unit}" for n, unit in parts)
    expected = sum(n * seconds[unit] for n, unit in parts)
    assert parse_duration(text) == datetime.timedelta(seconds=expected)


@pytest.mark.parametrize("text", ["", "7", "d", "-1d", "1.5h", "7 d", "1y", "7D"])
def test_a_bad_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1", 1), ("4096", 4096), ("4K", 4096), ("64KiB", 65536), ("1m", 1 << 20)],
)
def test_sizes_read_with_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "1P", "K", "-1"])
def test_a_bad_size_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (1 << 20, "1 MiB"),
    ],
)
def test_sizes_print_for_people(size: int, text: str) -> None:
    assert format_size(size) == text


def _programs() -> list[list[str]]:
    programs = [[sys.executable, "-m", "sessionstore"]]
    script = shutil.which("sessionstore")
    if script is not None:
        programs.append([script])
    return programs


@pytest.mark.parametrize("program", _programs(), ids=lambda p: " ".join(p[1:]) or p[0])
def test_the_installed_program_lists_shows_and_cats(
    backend_env: dict[str, str], tmp_path: Path, program: list[str]
) -> None:
    storage = make(tmp_path, b"\x00binary\xff")
    listed = subprocess.run(
        [*program, "list", "--json", "--repo", str(tmp_path)],
        env=backend_env,
        capture_output=True,
        check=True,
    )
    assert [e["id"] for e in json.loads(listed.stdout)] == [storage.id]
    cat = subprocess.run(
        [*program, "cat", storage.id, "--repo", str(tmp_path)],
        env=backend_env,
        capture_output=True,
        check=True,
    )
    assert cat.stdout == b"\x00binary\xff"
    missing = subprocess.run(
        [*program, "show", "nope", "--repo", str(tmp_path)],
        env=backend_env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert missing.stderr == f"sessionstore show: no session 'nope' in {tmp_path}\n"


def test_a_damaged_checkpoint_is_one_line_not_a_traceback(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sessionstore import Layout

    storage = SessionStorage.create(tmp_path, layout=Layout.SLOTTED)
    storage.save_checkpoint(b"checkpoint")
    with open(storage.paths.slots, "r+b") as slots:
        slots.write(b"garbage")
    status, out, err = run(capsys, "cat", storage.id, "--repo", tmp_path)
    assert status == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "damaged checkpoint" in err
    assert storage.paths.slots in err


@pytest.mark.parametrize("age", ["9999999999d", "99999999999999999999w"])
def test_an_age_beyond_the_calendar_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], age: str
) -> None:
    err = usage_error(capsys, "prune", "--older-than", age, "--repo", tmp_path)
    assert "longer than any date" in err


def test_an_age_reaching_before_the_calendar_spares_every_session(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = make(tmp_path, age_days=10)
    status, _, _ = run(capsys, "prune", "--older-than", "800000d", "--repo", tmp_path)
    assert status == 0
    assert os.path.isdir(kept.location)


def test_a_name_that_is_not_text_is_listed_escaped(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    os.mkdir(os.fsencode(tmp_path) + b"/caf\xe9.session")
    env = {**backend_env, "PYTHONIOENCODING": "utf-8:strict"}
    done = subprocess.run(
        [sys.executable, "-m", "sessionstore", "list", "--repo", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "caf\\xe9" in done.stdout


@pytest.fixture
def tmpfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tmpfs, which stores times far outside what a datetime holds."""
    for mount in filesystems.mount_or_skip(filesystems.TMPFS, tmp_path_factory):
        yield mount.root


@pytest.mark.root
def test_sessions_dated_beyond_year_9999_or_before_year_1_list_and_prune(
    backend: str, tmpfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    year_12000_ns = 315_537_897_600 * 10**9
    future = make(tmpfs)
    date_session(future.location, year_12000_ns)
    past = make(tmpfs)
    date_session(past.location, -year_12000_ns)
    now = make(tmpfs)

    status, out, err = run(capsys, "list", "--json", "--repo", tmpfs)
    assert (status, err) == (0, "")
    listed = json.loads(out)
    assert [s["id"] for s in listed] == [future.id, now.id, past.id]
    assert listed[0]["modified"] == "9999-12-31T23:59:59.999999+00:00"
    assert listed[2]["modified"] == "0001-01-01T00:00:00+00:00"

    status, out, err = run(
        capsys, "prune", "--keep", "0", "--older-than", "1d", "--repo", tmpfs
    )
    assert (status, err) == (0, "")
    assert out.splitlines()[-1] == f"removed 1 session from {tmpfs}"
    assert sorted(os.listdir(tmpfs)) == sorted(
        os.path.basename(s.location) for s in (future, now)
    )


def test_prune_of_a_missing_repository_says_where_it_looked_and_exits_0(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    status, out, err = run(capsys, "prune", "--keep", "1", "--repo", missing)
    assert (status, out, err) == (0, f"removed 0 sessions from {missing}\n", "")
    assert not missing.exists()


def test_a_prune_that_fails_says_what_it_removed_then_the_error(
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sessions = [make(tmp_path, age_days=days) for days in (10, 11, 12)]
    refused = sessions[1]
    remove = SessionStorage.remove

    def remove_unless_refused(storage: SessionStorage) -> None:
        if storage.location == refused.location:
            raise PermissionError(
                errno.EPERM, "Operation not permitted", storage.location
            )
        remove(storage)

    monkeypatch.setattr(SessionStorage, "remove", remove_unless_refused)
    status, out, err = run(capsys, "prune", "--keep", "0", "--repo", tmp_path)
    assert status == 1
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["removed", sessions[0].id],
        ["removed", sessions[2].id],
    ]
    assert err == (f"sessionstore prune: Operation not permitted: {refused.location}\n")
