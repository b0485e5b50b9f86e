"""The layout conversion as data: the plan ``convert_layout()`` executes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sessionstore import Durability, Layout
from sessionstore._conversion_plan import (
    FILE_OF,
    ConversionStep,
    Step,
    checkpoint_file,
    plan_conversion,
)
from sessionstore._naming import CHECKPOINT_FILES
from sessionstore._save_plan import SaveStep, plan_save
from sessionstore._slots_format import build_slots_file

layouts = st.sampled_from(list(Layout))
durabilities = st.sampled_from(list(Durability))
found_names = st.frozensets(st.sampled_from(CHECKPOINT_FILES))


def after(step: Step, steps: tuple[Step, ...], *, at: int = 0) -> tuple[Step, ...]:
    """The steps after the first ``step`` at or after index ``at``."""
    return steps[steps.index(step, at) + 1 :]


@given(layout=layouts, durability=durabilities)
def test_the_copy_is_the_replace_save_after_its_lock_writing_the_new_file(
    layout: Layout, durability: Durability
) -> None:
    plan = plan_conversion(layout, durability)
    save = plan_save(durability, FILE_OF[layout]).steps
    assert plan.copy_save.steps == after(SaveStep.LOCK_DIR, save)
    assert plan.copy_save.target_name == FILE_OF[layout] == plan.target_name
    assert plan.old_name != plan.target_name
    assert plan.copy_save.codes == bytes(plan.copy_save.steps)


@given(layout=layouts)
def test_a_durable_conversion_renames_the_flushed_copy_and_flushes_the_name_first(
    layout: Layout,
) -> None:
    """The old file goes only once the new one's data and name are durable."""
    steps = plan_conversion(layout, Durability.FULL).steps
    removed = steps.index(ConversionStep.REMOVE_OLD)
    renamed = steps.index(SaveStep.RENAME_NEXT)
    assert steps.index(SaveStep.WRITE_NEXT) < steps.index(SaveStep.FSYNC_NEXT)
    assert steps.index(SaveStep.FSYNC_NEXT) < renamed
    assert SaveStep.FSYNC_DIR in steps[renamed:removed]
    # The removal is made durable before the conversion returns.
    assert steps[removed:] == (
        ConversionStep.REMOVE_OLD,
        SaveStep.FSYNC_DIR,
        SaveStep.CLOSE_DIR,
    )


@given(layout=layouts)
def test_without_durability_only_the_flushes_are_dropped(layout: Layout) -> None:
    full = plan_conversion(layout, Durability.FULL).steps
    none = plan_conversion(layout, Durability.NONE).steps
    flushes = {SaveStep.FSYNC_NEXT, SaveStep.FSYNC_DIR}
    assert none == tuple(step for step in full if step not in flushes)


@given(layout=layouts, durability=durabilities, found=found_names)
def test_the_work_leaves_the_checkpoint_in_the_target_file_and_never_in_none(
    layout: Layout, durability: Durability, found: frozenset[str]
) -> None:
    """Step by step over the names: the file that holds the checkpoint (``session``
    while both exist) is never gone, and at the end it is the target's, alone."""
    plan = plan_conversion(layout, durability)
    holder = checkpoint_file(found)
    names = set(found)
    for step in plan.unfold(plan.work(found)):
        if step is SaveStep.RENAME_NEXT:
            names.add(plan.target_name)
        elif step is ConversionStep.REMOVE_OLD:
            names.discard(plan.old_name)
        assert (checkpoint_file(names) is None) == (holder is None)
    if holder is None:
        assert plan.work(found) == ()
    else:
        assert checkpoint_file(names) == plan.target_name
        assert plan.old_name not in names
        # A copy only when the target's file does not hold the checkpoint.
        copies = ConversionStep.SAVE_COPY in plan.work(found)
        assert copies == (holder != plan.target_name)


@given(layout=layouts, durability=durabilities)
def test_every_step_has_its_own_code(layout: Layout, durability: Durability) -> None:
    """Save and conversion steps in one sequence never compare equal."""
    steps = plan_conversion(layout, durability).steps
    assert {int(s) for s in SaveStep}.isdisjoint(int(s) for s in ConversionStep)
    assert plan_conversion(layout, durability).survey[-1] is ConversionStep.FIND_FILES
    assert steps[-1] is SaveStep.CLOSE_DIR


def test_the_copy_holds_the_checkpoint_in_the_new_layout() -> None:
    checkpoint = b"a checkpoint"
    slotted = plan_conversion(Layout.SLOTTED, Durability.FULL)
    replace = plan_conversion(Layout.REPLACE, Durability.FULL)
    assert slotted.copied(checkpoint) == build_slots_file(checkpoint, 1, None)
    assert replace.copied(checkpoint) == checkpoint
