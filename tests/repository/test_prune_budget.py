"""Size budgets for prune, on a real repository and through the command line."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from holders import held_elsewhere
from session_age import date_session
from sessionstore import SessionStorage, SessionStorageRepository
from sessionstore._cli import main


def aged(repo: Path, size: int, age_hours: int) -> SessionStorage:
    storage = SessionStorage.create(repo)
    storage.save_checkpoint(b"x" * size)
    then = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
        hours=age_hours
    )
    date_session(storage.location, int(then.timestamp() * 1e9))
    return storage


def test_a_budget_removes_the_oldest_until_the_total_fits(
    backend: str, tmp_path: Path
) -> None:
    young, middle, old, oldest = (aged(tmp_path, 1000, h) for h in (1, 2, 3, 4))
    repo = SessionStorageRepository(tmp_path)
    planned = repo.prune(max_total_size=2500, dry_run=True)
    assert [i.location for i in planned] == [old.location, oldest.location]
    assert len(os.listdir(tmp_path)) == 4
    removed = repo.prune(max_total_size=2500)
    assert [i.location for i in removed] == [old.location, oldest.location]
    assert {s.location for s in repo} == {young.location, middle.location}
    assert repo.prune(max_total_size=2500) == []
    # With keep, the budget is one more limit: keep=1 spares what it would take.
    second = repo.scan()[1]
    assert repo.prune(max_total_size=0, keep=1) == [second]
    assert [s.location for s in repo] == [young.location]


def test_a_budget_never_removes_a_held_session_but_counts_it(
    backend: str, tmp_path: Path
) -> None:
    held = aged(tmp_path, 3000, 5)
    young = aged(tmp_path, 1000, 1)
    with held_elsewhere(held.location):
        removed = SessionStorageRepository(tmp_path).prune(max_total_size=3500)
    assert [i.location for i in removed] == [young.location]
    assert [s.location for s in SessionStorageRepository(tmp_path)] == [held.location]


def test_prune_max_size_on_the_command_line(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    young = aged(tmp_path, 1 << 20, 1)
    old = aged(tmp_path, 1 << 20, 2)
    status = main(["prune", "--max-size", "1M", "--repo", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    assert out.splitlines()[0].startswith(f"removed {old.id}  (")
    assert out.splitlines()[-1] == f"removed 1 session from {tmp_path}"
    assert [s.location for s in SessionStorageRepository(tmp_path)] == [young.location]
    assert main(["prune", "--max-size", "0", "--repo", str(tmp_path)]) == 0
    assert os.listdir(tmp_path) == []
    with pytest.raises(SystemExit) as exited:
        main(["prune", "--max-size", "lots", "--repo", str(tmp_path)])
    assert exited.value.code == 2
