"""The crash-state explorer on layout conversions, and on broken ones.

A power cut at any moment of ``convert_layout()``, either way, must leave the
checkpoint loadable and unchanged, and calling it again must finish the job;
conversions that remove the old file before the new one's name is durable must
be caught.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from disk_model import Disk
from explorer import CrashState, explore
from recovery_checks import Problem, Violation, check_conversions

from sessionstore import Durability, Layout, SessionStorage
from sessionstore._conversion_plan import (
    FILE_OF,
    ConversionPlan,
    ConversionStep,
    plan_conversion,
)
from sessionstore._naming import NEXT_NAME
from sessionstore._save_plan import SaveStep

OLDER = b"older " * 100
OLD = bytes(range(256)) * 4 + b"old" * 25
OTHER = {Layout.REPLACE: Layout.SLOTTED, Layout.SLOTTED: Layout.REPLACE}


@pytest.fixture(params=list(Layout), ids=lambda layout: f"to {layout.value}")
def layout(request: pytest.FixtureRequest) -> Layout:
    """The layout converted to."""
    value: Layout = request.param
    return value


def build(layout: Layout, tmp_path: Path, name: str) -> Disk:
    """A session in the other layout than ``layout``, holding OLD (after OLDER)."""
    storage = SessionStorage.create(tmp_path / name, layout=OTHER[layout])
    storage.save_checkpoint(OLDER)
    storage.save_checkpoint(OLD)
    return Disk.read(Path(storage.location))


def violations_of(
    plan: ConversionPlan, layout: Layout, tmp_path: Path
) -> tuple[list[CrashState], list[Violation]]:
    states = explore(plan, build(layout, tmp_path, "template"), OLD)
    found = check_conversions(
        states, tmp_path / "states", checkpoint=OLD, layout=layout
    )
    return states, found


def report(violations: list[Violation]) -> str:
    return "\n".join(map(str, violations[:10])) + f"\n({len(violations)} in all)"


def test_a_conversion_recovers_from_a_power_cut_at_any_moment(
    backend: str, layout: Layout, tmp_path: Path
) -> None:
    states, violations = violations_of(
        plan_conversion(layout, Durability.FULL), layout, tmp_path
    )
    assert not violations, report(violations)
    # What the exploration went through: both files at once, a torn copy, and
    # the old file gone.
    names = [{name for name, _ in state.files} for state in states]
    assert {FILE_OF[layout], FILE_OF[OTHER[layout]]} in names
    leftovers = {state.content(NEXT_NAME) for state in states} - {None}
    assert len(leftovers) > 3, "no torn copy"
    assert {FILE_OF[layout]} in names


def test_the_model_of_a_conversion_leaves_what_the_library_leaves(
    backend: str, layout: Layout, tmp_path: Path
) -> None:
    plan = plan_conversion(layout, Durability.FULL)
    states = explore(plan, build(layout, tmp_path, "a"), OLD)
    real = build(layout, tmp_path, "b")
    after = tmp_path / "after.session"
    CrashState.of(real, returned=True, cut="", landed=[]).materialize(after)
    SessionStorage(after).convert_layout(layout)
    converted = CrashState.of(Disk.read(after), returned=True, cut="", landed=[])
    assert [state for state in states if state.returned] == [converted]


def test_removing_the_old_file_before_the_rename_is_durable_is_caught(
    backend: str, layout: Layout, tmp_path: Path
) -> None:
    plan = plan_conversion(layout, Durability.FULL)
    # The directory flush after the rename: without it the unlink may land
    # while the rename does not.
    copy_save = plan.copy_save
    unflushed = tuple(s for s in copy_save.steps if s is not SaveStep.FSYNC_DIR)
    broken = attrs.evolve(plan, copy_save=attrs.evolve(copy_save, steps=unflushed))
    _, violations = violations_of(broken, layout, tmp_path)
    torn = [v for v in violations if v.problem is Problem.TORN]
    assert torn, report(violations)
    assert all(FILE_OF[layout] not in dict(v.state.files) for v in torn)


def test_removing_the_old_file_first_is_caught(
    backend: str, layout: Layout, tmp_path: Path
) -> None:
    plan = plan_conversion(layout, Durability.FULL)
    first = attrs.evolve(
        plan,
        copy=(ConversionStep.REMOVE_OLD, *plan.copy),
        removal=tuple(s for s in plan.removal if s is not ConversionStep.REMOVE_OLD),
    )
    _, violations = violations_of(first, layout, tmp_path)
    assert Problem.TORN in {v.problem for v in violations}, report(violations)


def test_a_conversion_without_durability_is_not_safe_against_a_power_cut(
    backend: str, layout: Layout, tmp_path: Path
) -> None:
    plan = plan_conversion(layout, Durability.NONE)
    _, violations = violations_of(plan, layout, tmp_path)
    assert {v.problem for v in violations} >= {Problem.TORN, Problem.UNFINISHED}
