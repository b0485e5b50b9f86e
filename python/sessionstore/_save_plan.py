"""The save sequence as data.

Both writer backends execute a plan step by step, the crash-state explorer models
the same steps, and the syscall conformance test compares traces against them:
one description of the sequence, read by everything that depends on it.
"""

from __future__ import annotations

import enum
import functools

import attrs

from ._naming import CHECKPOINT_NAME, NEXT_NAME
from ._options import Durability


class SaveStep(enum.IntEnum):
    """One step of a save; the values are the codes the backends execute."""

    OPEN_DIR = 1
    """open the session directory ``O_DIRECTORY|O_CLOEXEC``"""
    LOCK_DIR = 2
    """``flock(dir, LOCK_EX|LOCK_NB)``; busy means a live writer"""
    CREATE_NEXT = 3
    """``openat(dir, next, O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0o600)``"""
    WRITE_NEXT = 4
    """write every byte, looping over short writes and EINTR"""
    FSYNC_NEXT = 5
    """``fsync(next)``: the data is durable before it gets its name"""
    CLOSE_NEXT = 6
    """``close(next)``, checked"""
    RENAME_NEXT = 7
    """``renameat(dir, next, dir, target)``: the atomic switch"""
    FSYNC_DIR = 8
    """``fsync(dir)``: the new name is durable"""
    CLOSE_DIR = 9
    """close the directory, which releases the lock"""


@attrs.frozen
class SavePlan:
    """The ordered steps of one save and the names they act on.

    ``codes`` is the same sequence as bytes, the form the native backend takes
    without converting anything per call.
    """

    steps: tuple[SaveStep, ...]
    next_name: str = NEXT_NAME
    target_name: str = CHECKPOINT_NAME
    codes: bytes = attrs.field(
        init=False,
        default=attrs.Factory(lambda plan: bytes(plan.steps), takes_self=True),
    )

    @property
    def durable(self) -> bool:
        return SaveStep.FSYNC_NEXT in self.steps and SaveStep.FSYNC_DIR in self.steps


_FLUSHES = frozenset({SaveStep.FSYNC_NEXT, SaveStep.FSYNC_DIR})


@functools.cache
def plan_save(
    durability: Durability = Durability.FULL, target_name: str = CHECKPOINT_NAME
) -> SavePlan:
    """The replace-by-rename save of SPEC section 2.

    ``Durability.NONE`` drops the two flushes and nothing else: the save stays
    atomic against a process crash. ``target_name`` is ``session`` for the seed's
    layout; the slotted layout rebuilds ``session.slots`` through the same plan.
    """
    steps = tuple(SaveStep)
    if durability is Durability.NONE:
        steps = tuple(step for step in steps if step not in _FLUSHES)
    return SavePlan(steps=steps, target_name=target_name)
