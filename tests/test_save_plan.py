"""The save sequence as data: what both backends execute."""

from __future__ import annotations

from sessionstore import Durability
from sessionstore._save_plan import SaveStep, plan_save


def test_the_durable_plan_is_the_contract_sequence() -> None:
    assert plan_save(Durability.FULL).steps == (
        SaveStep.OPEN_DIR,
        SaveStep.LOCK_DIR,
        SaveStep.CREATE_NEXT,
        SaveStep.WRITE_NEXT,
        SaveStep.FSYNC_NEXT,
        SaveStep.CLOSE_NEXT,
        SaveStep.RENAME_NEXT,
        SaveStep.FSYNC_DIR,
        SaveStep.CLOSE_DIR,
    )
    assert plan_save(Durability.FULL).durable


def test_no_durability_drops_exactly_the_two_flushes() -> None:
    full = plan_save(Durability.FULL).steps
    none = plan_save(Durability.NONE).steps
    assert none == tuple(
        s for s in full if s not in {SaveStep.FSYNC_NEXT, SaveStep.FSYNC_DIR}
    )
    assert not plan_save(Durability.NONE).durable


def test_data_is_flushed_before_it_is_named_and_the_name_before_return() -> None:
    steps = plan_save(Durability.FULL).steps
    assert steps.index(SaveStep.WRITE_NEXT) < steps.index(SaveStep.FSYNC_NEXT)
    assert steps.index(SaveStep.FSYNC_NEXT) < steps.index(SaveStep.RENAME_NEXT)
    assert steps.index(SaveStep.RENAME_NEXT) < steps.index(SaveStep.FSYNC_DIR)
    assert steps[-1] is SaveStep.CLOSE_DIR


def test_codes_are_the_steps_as_bytes() -> None:
    plan = plan_save(Durability.FULL)
    assert plan.codes == bytes(int(step) for step in plan.steps)
    assert plan.next_name == "session.next"
    assert plan.target_name == "session"


def test_plans_are_computed_once() -> None:
    assert plan_save(Durability.NONE) is plan_save(Durability.NONE)
