"""Every state a power cut at any moment of a plan can leave on disk.

``explore()`` runs a plan (``plan_save()``, ``plan_slotted_save()``,
``plan_conversion()``: the plans the library runs) step by step on the disk
model, cuts the power after every step and enumerates every state the disk may
then hold (this folder's README.md says why that is every state of a cut at any
moment). ``recovery_checks`` then checks the real library on each.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
from disk_model import Disk, Effect, Flush, flushed, landings
from step_tables import (
    CONVERSION_STEPS,
    REPLACE_STEPS,
    SLOTTED_STEPS,
    Execution,
    StepModel,
)

from sessionstore._conversion_plan import ConversionPlan, Step
from sessionstore._save_plan import SavePlan, SlottedPlan


@attrs.frozen
class CrashState:
    """One state of the session directory after a power cut.

    ``files`` is what each name reads as; ``links`` groups names that are one
    inode. ``returned`` says whether the save had returned before the cut;
    ``cut`` and ``landed`` say how the state came about, for reports.
    """

    files: tuple[tuple[str, bytes], ...]
    links: tuple[tuple[str, ...], ...]
    returned: bool
    cut: str = attrs.field(eq=False)
    landed: tuple[str, ...] = attrs.field(eq=False)

    @classmethod
    def of(
        cls, disk: Disk, *, returned: bool, cut: str, landed: Sequence[str]
    ) -> CrashState:
        names_of: dict[int, list[str]] = {}
        for name, inode in sorted(disk.entries.items()):
            names_of.setdefault(inode, []).append(name)
        return cls(
            files=tuple(sorted((n, disk.inodes[i]) for n, i in disk.entries.items())),
            links=tuple(
                sorted(tuple(names) for names in names_of.values() if len(names) > 1)
            ),
            returned=returned,
            cut=cut,
            landed=tuple(landed),
        )

    def content(self, name: str) -> bytes | None:
        return dict(self.files).get(name)

    def materialize(self, directory: Path) -> None:
        """Write this state into ``directory``, a new directory."""
        directory.mkdir(mode=0o700)
        linked = {name: group[0] for group in self.links for name in group[1:]}
        for name, data in self.files:
            if name not in linked:
                (directory / name).write_bytes(data)
        for name, first in linked.items():
            os.link(directory / first, directory / name)

    def __str__(self) -> str:
        files = ", ".join(f"{n}: {len(d)} bytes" for n, d in self.files) or "empty"
        links = f", linked {self.links}" if self.links else ""
        landed = "; ".join(self.landed) or "nothing pending"
        return f"cut {self.cut}: {files}{links} [{landed}]"


def explore(
    plan: SavePlan | SlottedPlan | ConversionPlan,
    before: Disk,
    checkpoint: bytes,
    steps: Mapping[Step, StepModel] | None = None,
) -> list[CrashState]:
    """Every distinct state a power cut at any moment of ``plan`` can leave.

    ``before`` is the durable disk when the save starts; ``checkpoint`` is what
    is saved. A slotted plan runs its in-place steps and, where the program
    would (no slots file, or a record that does not fit), goes on with its
    rebuild steps. A conversion runs its survey, then the work what it finds
    calls for; ``checkpoint`` is what its ``READ_OLD`` reads from the old
    layout's file. ``steps`` defaults to the table of the plan's kind. States
    that look alike on disk and agree on whether the save had returned are
    reported once.
    """
    first: SavePlan | ConversionPlan
    start: tuple[Step, ...]
    every: tuple[Step, ...]
    if isinstance(plan, SlottedPlan):
        first, rebuild = plan.in_place, plan.rebuild
        table = SLOTTED_STEPS if steps is None else steps
        start, every = first.steps, first.steps + rebuild.steps
    elif isinstance(plan, ConversionPlan):
        first, rebuild = plan, None
        table = CONVERSION_STEPS if steps is None else steps
        start, every = plan.unfold(plan.survey), plan.steps
    else:
        first, rebuild = plan, None
        table = REPLACE_STEPS if steps is None else steps
        start, every = plan.steps, plan.steps
    unknown = [step for step in dict.fromkeys(every) if step not in table]
    if unknown:
        raise ValueError(f"no model of the on-disk effects of {unknown}")
    run = Execution(first, checkpoint, before, rebuild)
    durable = before
    pending: list[Effect] = []
    found: dict[CrashState, None] = {}

    def cut(label: str, *, returned: bool) -> None:
        for disk, labels in landings(pending, durable):
            state = CrashState.of(disk, returned=returned, cut=label, landed=labels)
            found.setdefault(state)

    cut("before the save", returned=False)
    queue = list(start)
    while queue:
        step = queue.pop(0)
        for effect in table[step](run):
            if isinstance(effect, Flush):
                durable = flushed(durable, pending, effect.target)
                pending = [e for e in pending if e.target != effect.target]
            else:
                pending.append(effect)
                run.disk = effect.apply(run.disk)
        if run.diverted is not None:
            queue, run.diverted = list(run.diverted), None
        cut(f"after {step.name}", returned=not queue)
    return list(found)
