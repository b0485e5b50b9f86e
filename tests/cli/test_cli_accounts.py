"""The command line gives one account of each condition, however it is reached."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from holders import held_elsewhere
from sessionstore import SessionStorage
from sessionstore._cli import main
from sessionstore._naming import NEXT_NAME


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def held_between_saves(
    backend: str, tmp_path: Path
) -> Iterator[tuple[SessionStorage, subprocess.Popen[str]]]:
    """A session another process holds through ``hold()``, between two saves."""
    storage = SessionStorage.create(tmp_path)
    with held_elsewhere(storage.location) as holder:
        yield storage, holder


def test_a_session_held_between_saves_gets_one_account(
    held_between_saves: tuple[SessionStorage, subprocess.Popen[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    storage, holder = held_between_saves
    who = f"held by pid {holder.pid} ("
    _, out, _ = run(capsys, "list", "--repo", tmp_path)
    assert who in out.splitlines()[1]
    _, out, _ = run(capsys, "show", storage.id, "--repo", tmp_path)
    assert f"lock        held by pid {holder.pid} (" in out
    _, out, _ = run(capsys, "show", "--json", storage.id, "--repo", tmp_path)
    assert json.loads(out)["holder"]["pid"] == holder.pid
    for force in ((), ("--force",)):
        status, out, err = run(
            capsys, "break-lock", *force, storage.id, "--repo", tmp_path
        )
        assert (status, out) == (1, "")
        assert who in err
        assert "there is no session.next to remove" in err
        assert "--force removes" not in err
        assert "nothing to break" not in err
    assert storage.lock_state().value == "held"


def test_a_repository_that_is_a_file_has_one_wording(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "file"
    file.write_bytes(b"")
    expected = f"session repository is not a directory: {file}\n"
    for argv in (
        ("list",),
        ("show", "x"),
        ("cat", "x"),
        ("prune", "--keep", "1"),
        ("break-lock", "x"),
        ("bench", "--budget", "0.01", "--sizes", "1K"),
    ):
        status, out, err = run(capsys, *argv, "--repo", file)
        assert (status, out) == (1, "")
        assert err == f"sessionstore {argv[0]}: {expected}"
    from sessionstore import SessionStorage as Storage

    with pytest.raises(NotADirectoryError) as raised:
        Storage.create(file)
    assert f"{raised.value.strerror}: {raised.value.filename}\n" == expected


def test_the_repository_may_come_before_the_command(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = SessionStorage.create(tmp_path / "repo")
    status, out, _ = run(capsys, "--repo", tmp_path / "repo", "list", "--json")
    assert status == 0
    assert [e["id"] for e in json.loads(out)] == [storage.id]
    # Given after the command too, the later one wins, as argparse reads them.
    status, out, _ = run(
        capsys,
        "--repo",
        tmp_path / "other",
        "list",
        "--json",
        "--repo",
        tmp_path / "repo",
    )
    assert [e["id"] for e in json.loads(out)] == [storage.id]


def test_the_path_list_json_prints_is_accepted_as_an_id(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = SessionStorage.create(tmp_path / "repo")
    storage.save_checkpoint(b"data")
    Path(storage.location, NEXT_NAME).write_bytes(b"")
    _, out, _ = run(capsys, "list", "--json", "--repo", tmp_path / "repo")
    (listed,) = json.loads(out)
    path = listed["location"]
    status, out, _ = run(capsys, "show", "--json", path, "--repo", tmp_path / "repo")
    assert (status, json.loads(out)["id"]) == (0, storage.id)
    assert main(["cat", path, "--repo", str(tmp_path / "repo")]) == 0
    assert capsys.readouterr().out == "data"
    status, out, _ = run(capsys, "break-lock", path, "--repo", tmp_path / "repo")
    assert (status, out) == (0, f"removed the stale lock of {storage.id}\n")
    # A trailing slash and a relative path to the same place are the same session.
    os.chdir(tmp_path)
    status, out, _ = run(
        capsys, "show", f"repo/{storage.id}.session/", "--repo", "repo"
    )
    assert status == 0


@pytest.mark.parametrize(
    "path",
    ["{tmp}/elsewhere/{name}", "{tmp}/repo/{name}/..", "{tmp}/repo/sub/{name}"],
)
def test_a_path_outside_the_repository_is_refused(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], path: str
) -> None:
    storage = SessionStorage.create(tmp_path / "repo")
    elsewhere = SessionStorage.create(tmp_path / "elsewhere")
    os.rename(elsewhere.location, tmp_path / "elsewhere" / f"{storage.id}.session")
    (tmp_path / "repo" / "sub" / f"{storage.id}.session").mkdir(parents=True)
    given = path.format(tmp=tmp_path, name=f"{storage.id}.session")
    status, out, err = run(capsys, "show", given, "--repo", tmp_path / "repo")
    assert (status, out) == (1, "")
    assert "not a session id" in err


def test_bench_measures_each_size_once_and_prints_microseconds(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(
        capsys,
        "bench",
        "--dir",
        tmp_path,
        "--sizes",
        "1K,1K,1024,2K",
        "--budget",
        "0.05",
    )
    assert status == 0
    rows = [line.split()[:3] for line in out.splitlines()[2:]]
    assert rows == [
        ["1", "KiB", "full"],
        ["1", "KiB", "none"],
        ["2", "KiB", "full"],
        ["2", "KiB", "none"],
    ]
    assert " us" not in out


def test_latencies_below_a_millisecond_print_in_microseconds() -> None:
    from sessionstore._units import format_seconds

    assert format_seconds(250e-6) == "250 µs"
