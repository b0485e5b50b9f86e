"""The crash-state explorer on the real save plan, and on broken ones.

The real plan must survive a power cut at every moment, on both backends; plans
with a flush missing or misplaced must be caught, each with the problem it has.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from disk_model import Disk
from explorer import explore
from recovery_checks import Problem, Violation, check_all

from sessionstore import Durability, SessionStorage
from sessionstore._naming import CHECKPOINT_NAME, NEXT_NAME
from sessionstore._save_plan import SavePlan, SaveStep, plan_save

# Three sectors each, the last one partial, and different lengths: a torn or
# mixed file is neither of them.
OLD = bytes(range(256)) * 4 + b"old" * 25
NEW = b"new checkpoint " * 95


@pytest.fixture(params=["first save", "replacing a checkpoint"])
def old(request: pytest.FixtureRequest) -> bytes:
    """The checkpoint before the save: none, or OLD."""
    return b"" if request.param == "first save" else OLD


@pytest.fixture
def before(backend: str, tmp_path: Path, old: bytes) -> Disk:
    """The session as the real library leaves it after saving ``old``."""
    storage = SessionStorage.create(tmp_path / "template")
    if old:
        storage.save_checkpoint(old)
    return Disk.read(Path(storage.location))


def report(violations: list[Violation]) -> str:
    return "\n".join(map(str, violations[:10])) + f"\n({len(violations)} in all)"


def test_the_save_plan_recovers_from_a_power_cut_at_any_moment(
    before: Disk, old: bytes, tmp_path: Path
) -> None:
    states = explore(plan_save(Durability.FULL), before, NEW)
    violations = check_all(states, tmp_path / "states", old=old, new=NEW)
    assert not violations, report(violations)
    # What the exploration went through, so a model that stopped enumerating
    # (and so found nothing) would fail here.
    checkpoints = {state.content(CHECKPOINT_NAME) for state in states}
    assert checkpoints == {old or None, NEW}
    leftovers = {state.content(NEXT_NAME) for state in states} - {None}
    assert b"" in leftovers
    assert NEW in leftovers
    assert any(part not in (b"", NEW) for part in leftovers), "no torn session.next"
    assert any(state.links for state in states), "no rename that kept its source"
    assert {state.content(CHECKPOINT_NAME) for state in states if state.returned} == {
        NEW
    }


def plan_without(step: SaveStep) -> SavePlan:
    return SavePlan(steps=tuple(s for s in plan_save().steps if s is not step))


def plan_moving(step: SaveStep, after: SaveStep) -> SavePlan:
    steps = [s for s in plan_save().steps if s is not step]
    steps.insert(steps.index(after) + 1, step)
    return SavePlan(steps=tuple(steps))


def problems_of(
    plan: SavePlan, before: Disk, old: bytes, tmp_path: Path
) -> list[Violation]:
    return check_all(explore(plan, before, NEW), tmp_path / "states", old=old, new=NEW)


def test_renaming_before_the_data_is_flushed_is_caught_as_torn(
    before: Disk, old: bytes, tmp_path: Path
) -> None:
    violations = problems_of(plan_without(SaveStep.FSYNC_NEXT), before, old, tmp_path)
    torn = [v for v in violations if v.problem is Problem.TORN]
    assert torn, report(violations)
    # It is the rename landing ahead of the data, before and after the return.
    assert all(v.state.content(CHECKPOINT_NAME) not in (old or None, NEW) for v in torn)
    assert {v.state.returned for v in torn} == {False, True}


def test_flushing_the_data_after_the_rename_is_caught_as_torn(
    before: Disk, old: bytes, tmp_path: Path
) -> None:
    plan = plan_moving(SaveStep.FSYNC_NEXT, after=SaveStep.RENAME_NEXT)
    violations = problems_of(plan, before, old, tmp_path)
    assert Problem.TORN in {v.problem for v in violations}, report(violations)


def test_returning_before_the_directory_is_flushed_is_caught_as_lost(
    before: Disk, old: bytes, tmp_path: Path
) -> None:
    violations = problems_of(plan_without(SaveStep.FSYNC_DIR), before, old, tmp_path)
    assert violations, "a save without a directory flush passed"
    # Only durability after the return fails: until then, old or new is right.
    assert {v.problem for v in violations} == {Problem.LOST}, report(violations)
    assert all(v.state.returned for v in violations)
    assert all(v.state.content(CHECKPOINT_NAME) == (old or None) for v in violations)


def test_a_save_without_durability_is_not_safe_against_a_power_cut(
    before: Disk, old: bytes, tmp_path: Path
) -> None:
    # Durability.NONE promises atomicity against a process crash only; the
    # explorer shows what a power cut can do to it.
    violations = problems_of(plan_save(Durability.NONE), before, old, tmp_path)
    assert {Problem.TORN, Problem.LOST} <= {v.problem for v in violations}


def test_a_plan_with_a_step_the_model_does_not_know_is_refused(before: Disk) -> None:
    with pytest.raises(ValueError, match="no model"):
        explore(plan_save(), before, NEW, steps={})


def test_writes_too_long_to_tear_exhaustively_are_refused(before: Disk) -> None:
    with pytest.raises(ValueError, match="exhaustively"):
        explore(plan_save(), before, b"x" * 512 * 9)
