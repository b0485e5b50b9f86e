"""``sessionstore doctor`` on real filesystems and real repositories."""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import filesystems
from session_age import date_session
from sessionstore import Layout, SessionStorage
from sessionstore._cli import main
from sessionstore._naming import NEXT_NAME, SLOTS_NAME, plan_tombstone_name

MiB = 1 << 20


def doctor(
    capsys: pytest.CaptureFixture[str], repo: Path | None, *args: str
) -> tuple[int, dict[str, Any]]:
    where = () if repo is None else ("--repo", str(repo))
    status = main(["doctor", "--json", *where, *args])
    out, err = capsys.readouterr()
    assert err == ""
    report = json.loads(out)
    assert status == (1 if report["needs_attention"] else 0)
    return status, report


# What the filesystem the tests run on may add (an overlayfs in a container, a
# tmpfs /tmp): the tests on such a directory judge everything else.
HOST: frozenset[str] = frozenset(
    {"volatile-filesystem", "untested-filesystem", "no-barriers"}
)


def codes(report: dict[str, Any], severity: str = "attention") -> set[str]:
    return {f["code"] for f in report["findings"] if f["severity"] == severity}


def codes_beside_host(report: dict[str, Any]) -> set[str]:
    return codes(report) - HOST


def finding(report: dict[str, Any], code: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [f for f in report["findings"] if f["code"] == code]
    assert len(found) == 1, found
    return found[0]


def aged(repo: Path, days: float, data: bytes = b"checkpoint") -> SessionStorage:
    storage = SessionStorage.create(repo)
    storage.save_checkpoint(data)
    then = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days)
    date_session(storage.location, int(then.timestamp() * 1e9))
    return storage


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[filesystems.Mount]:
    yield from filesystems.mount_or_skip(filesystems.TMPFS, tmp_path_factory)


@pytest.fixture(scope="module")
def xfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[filesystems.Mount]:
    yield from filesystems.mount_or_skip("xfs", tmp_path_factory)


def test_a_tmpfs_repository_is_volatile(
    backend: str, tmpfs: filesystems.Mount, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmpfs.root / f"volatile-{backend}"
    kept = aged(repo, 0)
    status, report = doctor(capsys, repo)
    assert status == 1
    assert codes(report) == {"volatile-filesystem"}
    assert report["facts"]["filesystem"]["type"] == "tmpfs"
    assert report["facts"]["statfs_type"] == "0x1021994"  # TMPFS_MAGIC
    assert report["facts"]["device"] is None
    latency = report["facts"]["save_latency"]
    assert latency["saves"] >= 5
    assert 0 < latency["median_seconds"] <= latency["p99_seconds"]
    # The burst left nothing behind.
    assert os.listdir(repo) == [os.path.basename(kept.location)]


def test_a_read_only_mount_says_so_and_that_saves_fail(
    backend: str, tmpfs: filesystems.Mount, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmpfs.root / f"read-only-{backend}"
    aged(repo, 0)
    with filesystems.read_only(tmpfs):
        status, report = doctor(capsys, repo)
    assert status == 1
    assert {"read-only", "save-failed"} <= codes(report)
    assert "Read-only file system" in finding(report, "save-failed")["summary"]


def test_a_full_filesystem_is_found_before_a_save_fails(
    backend: str, tmpfs: filesystems.Mount, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmpfs.root / f"full-{backend}"
    big = aged(repo, 0, b"x" * MiB)
    with filesystems.filled(tmpfs, leave=64 << 10):
        status, report = doctor(capsys, repo, "--no-latency")
        assert report["facts"]["free_bytes"] < MiB
    assert status == 1
    assert "low-space" in codes(report)
    assert "largest checkpoint (1 MiB)" in finding(report, "low-space")["summary"]
    assert report["facts"]["sessions"]["largest_checkpoint"] == MiB
    assert big.load_checkpoint() == b"x" * MiB


def test_an_xfs_repository_on_a_loop_device_is_healthy(
    backend: str, xfs: filesystems.Mount, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = xfs.root / f"sessions-{backend}"
    aged(repo, 1)
    status, report = doctor(capsys, repo)
    assert (status, codes(report)) == (0, set())
    facts = report["facts"]
    assert facts["filesystem"]["type"] == "xfs"
    assert facts["statfs_type"] == "0x58465342"  # XFS_SUPER_MAGIC
    assert facts["filesystem"]["source"] == xfs.device
    assert xfs.device is not None
    assert facts["device"]["name"] == os.path.basename(xfs.device)
    assert facts["device"]["write_cache"] in ("write back", "write through")
    assert facts["save_latency"]["flush_median_seconds"] > 0
    assert codes(report, "ok") >= {
        "filesystem",
        "save-latency",
        "free-space",
        "sessions",
    }


def test_stale_locks_tombstones_and_damaged_sessions_are_named(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    healthy = aged(tmp_path, 0)
    stale = aged(tmp_path, 0)
    Path(stale.location, NEXT_NAME).write_bytes(b"left by a dead writer")
    damaged = SessionStorage.create(tmp_path, layout=Layout.SLOTTED)
    damaged.save_checkpoint(b"slotted checkpoint")
    slots = Path(damaged.location, SLOTS_NAME)
    slots.write_bytes(b"\xff" * slots.stat().st_size)
    never_saved = SessionStorage.create(tmp_path)
    # A checkpoint no read returns: ``session`` is a directory.
    unreadable = SessionStorage.create(tmp_path)
    Path(unreadable.session_file).mkdir()
    tombstone = tmp_path / plan_tombstone_name("pbox-x.session", "abcd")
    (tombstone / "junk").mkdir(parents=True)
    status, report = doctor(capsys, tmp_path, "--no-latency")
    assert status == 1
    assert {"stale-locks", "tombstones", "damaged", "unreadable"} <= codes(report)
    sessions = report["facts"]["sessions"]
    assert sessions["stale"] == [stale.id]
    assert sessions["damaged"] == [damaged.id]
    assert sessions["tombstones"] == [tombstone.name]
    assert sessions["unreadable"] == [unreadable.id]
    assert sessions["count"] == 5
    assert healthy.id not in json.dumps(report["findings"])
    assert never_saved.id not in json.dumps(report["findings"])
    assert report["facts"]["save_latency"] is None
    # The text report: the same findings, each with what to do.
    assert main(["doctor", "--no-latency", "--repo", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "ATTENTION  stale-locks: 1 session(s) with a stale lock" in text
    assert "what to do: sessionstore break-lock ID (each)" in text
    count = len(codes(report))
    assert count >= 4
    assert text.endswith(f"{count} findings need attention\n")


def test_a_tmpfiles_rule_that_ages_the_repository(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "var" / "sessions"
    etc, usr = tmp_path / "etc-tmpfiles.d", tmp_path / "usr-tmpfiles.d"
    etc.mkdir()
    usr.mkdir()
    (usr / "sessions.conf").write_text(f"d {tmp_path}/var 0755 root root 10d\n")
    dirs = ("--tmpfiles-dir", str(etc), "--tmpfiles-dir", str(usr))
    young = aged(repo, 0)
    _, report = doctor(capsys, repo, "--no-latency", *dirs)
    assert codes_beside_host(report) == set()
    note = finding(report, "tmpfiles-age")
    assert note["severity"] == "note"
    assert f"{usr}/sessions.conf:1" in note["summary"]
    assert report["facts"]["tmpfiles"]["age_seconds"] == 10 * 86400
    old = aged(repo, 11)
    status, report = doctor(capsys, repo, "--no-latency", *dirs)
    assert status == 1
    aging = finding(report, "tmpfiles-age")
    assert aging["severity"] == "attention"
    assert old.id in aging["summary"]
    assert young.id not in aging["summary"]
    # A file of the same name in the earlier directory masks it.
    (etc / "sessions.conf").write_text("")
    _, report = doctor(capsys, repo, "--no-latency", *dirs)
    assert report["facts"]["tmpfiles"] is None
    assert codes_beside_host(report) == set()


def test_a_missing_default_repository_gets_an_answer_and_stays_missing(
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = tmp_path / "not" / "yet"
    monkeypatch.setenv("PLAINBOX_SESSION_REPOSITORY", str(missing))
    _, report = doctor(capsys, None)
    assert codes_beside_host(report) == set()
    assert report["repository"] == str(missing)
    assert report["exists"] is False
    assert codes(report, "note") >= {"repository-missing"}
    assert report["facts"]["checked_path"] == str(tmp_path)
    assert report["facts"]["save_latency"]["saves"] >= 5
    assert report["facts"]["sessions"] is None
    assert os.listdir(tmp_path) == []
