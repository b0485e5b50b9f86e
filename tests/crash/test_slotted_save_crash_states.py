"""The crash-state explorer on the slotted layout's plan, and on broken ones.

The real plan must survive a power cut at every moment of an in-place save
(a record torn at any 512-byte sector falls back to the other slot) and of a
rebuild, on both backends, with ``load_previous()`` never giving torn data;
plans that skip the flush, or overwrite the slot of the newest whole record,
must be caught.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs
import pytest
from disk_model import Disk
from explorer import CrashState, explore
from recovery_checks import Problem, Violation, check_all
from step_tables import StepModel, read_records, slotted_steps

from sessionstore import Durability, Layout, SessionStorage
from sessionstore._conversion_plan import Step
from sessionstore._naming import NEXT_NAME, SLOTS_NAME
from sessionstore._save_plan import (
    SavePlan,
    SaveStep,
    SlottedPlan,
    plan_hold,
    plan_slotted_save,
)
from sessionstore._slots_format import (
    RECORD_HEADER_SIZE,
    FileHeader,
    RecordHeader,
    SlotChoice,
    choose_slot,
    newest_first,
)

# Different lengths and bytes, each a few sectors: a record torn anywhere, or
# one mixed from two, is none of them.
OLDER = b"older " * 100
OLD = bytes(range(256)) * 4 + b"old" * 25
NEW = b"new checkpoint " * 95
# What a save that was cut short left in the newest slot, torn after the fact.
CUT_SHORT = b"cut short " * 70
# Too big for a 4 KiB slot, so saving it rebuilds the file. Only its ends are
# not zeros: the rebuild's write then changes few enough sectors to tear it in
# every way (sectors of zeros read the same landed or not).
BIG = b"a big checkpoint" + bytes(4200) + b"its last bytes"


@attrs.frozen
class Scenario:
    """The saves before the explored one, and the one explored."""

    history: tuple[bytes, ...]
    new: bytes
    tear_last: bool = False
    """the last save of ``history`` is torn on disk, as a power cut leaves it"""

    @property
    def whole(self) -> tuple[bytes, ...]:
        return self.history[:-1] if self.tear_last else self.history

    @property
    def old(self) -> bytes:
        return self.whole[-1] if self.whole else b""

    @property
    def older(self) -> bytes | None:
        """What load_previous() gives before the save."""
        if self.tear_last or len(self.whole) < 2:
            return None
        return self.whole[-2]

    @property
    def in_place(self) -> bool:
        return bool(self.history) and self.new is not BIG


SCENARIOS = {
    "first save (rebuild: no file yet)": Scenario((), NEW),
    "second save (in place, empty slot)": Scenario((OLD,), NEW),
    "third save (in place, over the older record)": Scenario((OLDER, OLD), NEW),
    "after a torn save (in place, over the torn record)": Scenario(
        (OLDER, OLD, CUT_SHORT), NEW, tear_last=True
    ),
    "growing (rebuild: the record does not fit)": Scenario((OLDER, OLD), BIG),
}
IN_PLACE = [name for name, s in SCENARIOS.items() if s.in_place]
REBUILDS = [name for name, s in SCENARIOS.items() if not s.in_place]


def tear_newest_record(storage: SessionStorage) -> None:
    """Corrupt one byte of the newest record's data, as a torn write leaves it."""
    path = Path(storage.paths.slots)
    image = path.read_bytes()
    header, headers, _ = read_records(image)
    slot = newest_first((headers[0], headers[1]))[0]
    record = headers[slot]
    assert record is not None
    at = header.slot_offset(slot) + RECORD_HEADER_SIZE + record.length // 2
    with path.open("r+b") as slots:
        slots.seek(at)
        slots.write(bytes([image[at] ^ 0xFF]))


def build(scenario: Scenario, tmp_path: Path, name: str) -> Disk:
    """The session as the real library leaves it after the scenario's history."""
    storage = SessionStorage.create(tmp_path / name, layout=Layout.SLOTTED)
    for data in scenario.history:
        storage.save_checkpoint(data)
    if scenario.tear_last:
        tear_newest_record(storage)
    assert storage.load_checkpoint() == scenario.old
    assert storage.load_previous() == scenario.older
    return Disk.read(Path(storage.location))


def violations_of(
    plan: SlottedPlan,
    scenario: Scenario,
    tmp_path: Path,
    steps: Mapping[Step, StepModel] | None = None,
) -> tuple[list[CrashState], list[Violation]]:
    before = build(scenario, tmp_path, "template")
    states = explore(plan, before, scenario.new, steps)
    found = check_all(
        states,
        tmp_path / "states",
        old=scenario.old,
        new=scenario.new,
        layout=Layout.SLOTTED,
        older=scenario.older,
    )
    return states, found


def report(violations: list[Violation]) -> str:
    return "\n".join(map(str, violations[:10])) + f"\n({len(violations)} in all)"


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_slotted_plan_recovers_from_a_power_cut_at_any_moment(
    backend: str, name: str, tmp_path: Path
) -> None:
    scenario = SCENARIOS[name]
    states, violations = violations_of(plan_slotted_save(), scenario, tmp_path)
    assert not violations, report(violations)
    # What the exploration went through, so a model that stopped enumerating
    # (and so found nothing) would fail here.
    assert any(state.returned for state in states)
    if scenario.in_place:
        images = {state.content(SLOTS_NAME) for state in states}
        # Before, after, and records torn in between.
        assert len(images) > 3, f"{len(images)} slots files"
        assert all(state.content(NEXT_NAME) is None for state in states)
    else:
        leftovers = {state.content(NEXT_NAME) for state in states} - {None}
        assert b"" in leftovers
        assert len(leftovers) > 3, "no torn session.next"
        assert any(state.links for state in states), "no rename kept its source"


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_model_of_a_whole_save_leaves_what_the_library_leaves(
    backend: str, name: str, tmp_path: Path
) -> None:
    """The model's slot choice, sequence and file image are the library's own."""
    scenario = SCENARIOS[name]
    states = explore(plan_slotted_save(), build(scenario, tmp_path, "a"), scenario.new)
    real = build(scenario, tmp_path, "b")
    after = tmp_path / "after.session"
    CrashState.of(real, returned=True, cut="", landed=[]).materialize(after)
    SessionStorage(after, layout=Layout.SLOTTED).save_checkpoint(scenario.new)
    saved = CrashState.of(Disk.read(after), returned=True, cut="", landed=[])
    assert [state for state in states if state.returned] == [saved]


@pytest.mark.parametrize("name", IN_PLACE)
def test_once_fdatasync_returned_the_new_checkpoint_loads(
    backend: str, name: str, tmp_path: Path
) -> None:
    """Cut short right after ``SYNC_SLOT``, the save counts as returned there."""
    plan = plan_slotted_save()
    steps = plan.in_place.steps[: plan.in_place.steps.index(SaveStep.SYNC_SLOT) + 1]
    cut_short = attrs.evolve(plan, in_place=SavePlan(steps, target_name=SLOTS_NAME))
    states, violations = violations_of(cut_short, SCENARIOS[name], tmp_path)
    assert not violations, report(violations)
    assert len([state for state in states if state.returned]) == 1


def in_place_without(step: SaveStep) -> SlottedPlan:
    plan = plan_slotted_save()
    steps = tuple(s for s in plan.in_place.steps if s is not step)
    return attrs.evolve(plan, in_place=SavePlan(steps, target_name=SLOTS_NAME))


def rebuild_without(step: SaveStep) -> SlottedPlan:
    plan = plan_slotted_save()
    steps = tuple(s for s in plan.rebuild.steps if s is not step)
    return attrs.evolve(plan, rebuild=SavePlan(steps, target_name=SLOTS_NAME))


@pytest.mark.parametrize("name", IN_PLACE)
def test_returning_before_the_slot_is_flushed_is_caught_as_lost(
    backend: str, name: str, tmp_path: Path
) -> None:
    plan = in_place_without(SaveStep.SYNC_SLOT)
    _, violations = violations_of(plan, SCENARIOS[name], tmp_path)
    assert violations, "an in-place save without fdatasync passed"
    # Until the return old or new is right (a torn record fails its checksum);
    # after it, the write may still be lost.
    assert {v.problem for v in violations} == {Problem.LOST}, report(violations)
    assert all(v.state.returned for v in violations)


def overwrite_the_newest_whole_record(
    header: FileHeader,
    headers: tuple[RecordHeader | None, RecordHeader | None],
    newest_is_valid: bool,
    length: int,
) -> SlotChoice:
    """The broken choice: the slot the library's choice spares."""
    right = choose_slot(header, headers, newest_is_valid, length)
    return attrs.evolve(right, slot=1 - right.slot)


@pytest.mark.parametrize("name", IN_PLACE)
def test_writing_over_the_newest_whole_record_is_caught_as_torn(
    backend: str, name: str, tmp_path: Path
) -> None:
    steps = slotted_steps(overwrite_the_newest_whole_record)
    scenario = SCENARIOS[name]
    _, violations = violations_of(plan_slotted_save(), scenario, tmp_path, steps)
    torn = [v for v in violations if v.problem is Problem.TORN]
    assert torn, report(violations)
    # A cut in the middle of the write: the old record is gone and the new one
    # is not whole, so an older one loads, or none at all.
    assert not any(v.state.returned for v in torn)


@pytest.mark.parametrize("name", REBUILDS)
def test_a_rebuild_renamed_before_its_data_is_flushed_is_caught_as_torn(
    backend: str, name: str, tmp_path: Path
) -> None:
    plan = rebuild_without(SaveStep.FSYNC_NEXT)
    _, violations = violations_of(plan, SCENARIOS[name], tmp_path)
    assert Problem.TORN in {v.problem for v in violations}, report(violations)


@pytest.mark.parametrize("name", REBUILDS)
def test_a_rebuild_without_a_directory_flush_is_caught_as_lost(
    backend: str, name: str, tmp_path: Path
) -> None:
    plan = rebuild_without(SaveStep.FSYNC_DIR)
    _, violations = violations_of(plan, SCENARIOS[name], tmp_path)
    assert {v.problem for v in violations} == {Problem.LOST}, report(violations)
    assert all(v.state.returned for v in violations)


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_slotted_save_without_durability_is_not_safe_against_a_power_cut(
    backend: str, name: str, tmp_path: Path
) -> None:
    plan = plan_slotted_save(Durability.NONE)
    _, violations = violations_of(plan, SCENARIOS[name], tmp_path)
    assert Problem.LOST in {v.problem for v in violations}, report(violations)


def test_a_slotted_plan_with_a_step_the_model_does_not_know_is_refused(
    tmp_path: Path,
) -> None:
    before = Disk(entries={}, inodes={})
    with pytest.raises(ValueError, match="no model"):
        explore(plan_slotted_save(), before, NEW, steps={})


def held_save(durability: Durability = Durability.FULL) -> SlottedPlan:
    """A held session's save as the explorer runs it: acquire, one save, release.

    A held session after its first save chooses the slot from what it wrote
    rather than by reading; ``test_held_session`` shows that choice is the one
    a read would make, so the read of the model stands for both.
    """
    held = plan_hold(durability, Layout.SLOTTED)
    steps = held.acquire.steps + held.save.steps + held.release.steps
    return SlottedPlan(
        in_place=SavePlan(steps, target_name=SLOTS_NAME), rebuild=held.rebuild
    )


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_held_save_recovers_from_a_power_cut_at_any_moment(
    backend: str, name: str, tmp_path: Path
) -> None:
    scenario = SCENARIOS[name]
    states, violations = violations_of(held_save(), scenario, tmp_path)
    assert not violations, report(violations)
    assert any(state.returned for state in states)
    one_shot = explore(
        plan_slotted_save(), build(scenario, tmp_path, "one-shot"), scenario.new
    )
    # The held save leaves exactly the states a one-shot save leaves: the
    # steps it does not run touch no file.
    assert set(states) == set(one_shot)
