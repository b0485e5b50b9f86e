"""The save sequence as data: what both backends execute."""

from __future__ import annotations

import pytest

from sessionstore import Durability, Layout
from sessionstore._save_plan import (
    SaveStep,
    plan_hold,
    plan_save,
    plan_slotted_save,
)


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


@pytest.mark.parametrize("durability", list(Durability))
def test_a_held_slotted_save_is_the_one_shot_save_split_at_the_lock(
    durability: Durability,
) -> None:
    held = plan_hold(durability, Layout.SLOTTED)
    one_shot = plan_slotted_save(durability)
    # Plus a check, after the slots file is open, that nobody removed it since.
    lifetime = held.acquire.steps + held.save.steps + held.release.steps
    assert tuple(s for s in lifetime if s is not SaveStep.CHECK_DIR_LINKED) == (
        one_shot.in_place.steps
    )
    opened = held.save.steps.index(SaveStep.OPEN_SLOTS)
    assert held.save.steps[opened + 1] is SaveStep.CHECK_DIR_LINKED
    assert held.acquire.steps[-1] is SaveStep.CHECK_REPLACE
    assert (*held.rebuild.steps, SaveStep.CLOSE_DIR) == one_shot.rebuild.steps
    assert held.durable == one_shot.durable == (durability is Durability.FULL)


@pytest.mark.parametrize("durability", list(Durability))
def test_a_held_replace_save_is_the_replace_sequence_inside_the_lock(
    durability: Durability,
) -> None:
    held = plan_hold(durability, Layout.REPLACE)
    one_shot = plan_save(durability).steps
    # The lock also refuses a leftover next file up front, as a slotted hold does.
    assert held.acquire.steps == (*one_shot[:2], SaveStep.CHECK_NEXT)
    assert held.save.steps == one_shot[2:-1]
    assert held.release.steps == (SaveStep.CLOSE_DIR,)
    assert held.rebuild.steps == ()
    assert held.durable == (durability is Durability.FULL)


def test_no_held_save_opens_locks_or_closes_the_directory() -> None:
    lifetime = {SaveStep.OPEN_DIR, SaveStep.LOCK_DIR, SaveStep.CLOSE_DIR}
    for layout in Layout:
        for durability in Durability:
            held = plan_hold(durability, layout)
            assert lifetime.isdisjoint(held.save.steps + held.rebuild.steps)


@pytest.mark.parametrize("durability", list(Durability))
def test_only_the_plan_that_owns_the_directory_closes_it(
    durability: Durability,
) -> None:
    """A one-shot save closes its directory; of a held session's plans, only
    the release does: its saves and rebuilds borrow the directory."""
    slotted = plan_slotted_save(durability)
    for plan in (plan_save(durability), slotted.in_place, slotted.rebuild):
        assert SaveStep.CLOSE_DIR in plan.steps
    for layout in Layout:
        held = plan_hold(durability, layout)
        for part in (held.acquire, held.save, held.rebuild):
            assert SaveStep.CLOSE_DIR not in part.steps
        assert SaveStep.CLOSE_DIR in held.release.steps
