"""The prune plan: which sessions go, as a pure function of scan, time and policy."""

from __future__ import annotations

import datetime
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import CheckpointStatus, LockState, SessionInfo
from sessionstore._prune import PrunePolicy, in_prune_order, plan_prune

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

times = st.datetimes(
    min_value=datetime.datetime(2025, 1, 1),
    max_value=datetime.datetime(2026, 7, 1),
    timezones=st.just(UTC),
)


@st.composite
def scans(draw: st.DrawFn) -> list[SessionInfo]:
    """Sessions with distinct locations, any times (ties included), any locks."""
    names = draw(st.lists(st.text("abcdef", min_size=1, max_size=6), unique=True))
    # Few distinct times, so that equal modification times are common.
    pool = draw(st.lists(times, min_size=1, max_size=4))
    return [
        SessionInfo(
            id=name,
            location=f"/repo/{name}.session",
            modified=draw(st.sampled_from(pool)),
            checkpoint_size=draw(st.none() | st.integers(0, 1 << 40)),
            lock=draw(st.sampled_from(LockState)),
            checkpoint=draw(st.sampled_from(CheckpointStatus)),
            unrecognised=draw(st.sampled_from([(), ("notes.txt",)])),
        )
        for name in names
    ]


keeps = st.integers(0, 12)
ages = st.timedeltas(
    min_value=datetime.timedelta(0), max_value=datetime.timedelta(days=600)
)
# Budgets around the sizes scans() draws, so that every case occurs: met
# already, met by removing some, not met even with every session gone.
budgets = st.integers(0, 1 << 41)
policies = (
    st.builds(
        PrunePolicy,
        keep=st.none() | keeps,
        older_than=ages,
        max_total_size=st.none() | budgets,
    )
    | st.builds(
        PrunePolicy,
        keep=keeps,
        older_than=st.none() | ages,
        max_total_size=st.none() | budgets,
    )
    | st.builds(
        PrunePolicy,
        keep=st.none() | keeps,
        older_than=st.none() | ages,
        max_total_size=budgets,
    )
)


def not_held(sessions: list[SessionInfo]) -> list[SessionInfo]:
    """The sessions a prune may remove: not held, lock known, recognised."""
    spared = {LockState.HELD, LockState.UNKNOWN}
    return [s for s in sessions if s.lock not in spared and s.recognised]


@given(scans(), policies)
def test_never_removes_what_it_does_not_recognise_or_whose_lock_is_unknown(
    sessions: list[SessionInfo], policy: PrunePolicy
) -> None:
    for removed in plan_prune(sessions, NOW, policy):
        assert removed.recognised
        assert removed.unrecognised == ()
        assert removed.checkpoint is not CheckpointStatus.UNREADABLE
        assert removed.lock is not LockState.UNKNOWN


@given(scans(), policies)
def test_never_removes_a_held_session(
    sessions: list[SessionInfo], policy: PrunePolicy
) -> None:
    assert all(s.lock is not LockState.HELD for s in plan_prune(sessions, NOW, policy))


@given(scans(), policies)
def test_removes_only_sessions_it_was_given(
    sessions: list[SessionInfo], policy: PrunePolicy
) -> None:
    removed = plan_prune(sessions, NOW, policy)
    assert len(set(removed)) == len(removed)
    assert set(removed) <= set(sessions)


@given(scans(), keeps)
def test_keep_alone_keeps_exactly_the_n_youngest_not_held(
    sessions: list[SessionInfo], keep: int
) -> None:
    removed = set(plan_prune(sessions, NOW, PrunePolicy(keep=keep)))
    kept = [s for s in not_held(sessions) if s not in removed]
    assert len(kept) == min(keep, len(not_held(sessions)))
    # Every kept session is at least as young as every removed one.
    for k in kept:
        for r in removed:
            assert k.modified >= r.modified


@given(scans(), ages)
def test_older_than_alone_removes_exactly_the_old_sessions_not_held(
    sessions: list[SessionInfo], age: datetime.timedelta
) -> None:
    removed = plan_prune(sessions, NOW, PrunePolicy(older_than=age))
    assert set(removed) == {s for s in not_held(sessions) if s.modified < NOW - age}


@given(scans(), keeps, ages)
def test_both_limits_remove_only_what_each_alone_would(
    sessions: list[SessionInfo], keep: int, age: datetime.timedelta
) -> None:
    both = set(plan_prune(sessions, NOW, PrunePolicy(keep=keep, older_than=age)))
    by_keep = set(plan_prune(sessions, NOW, PrunePolicy(keep=keep)))
    by_age = set(plan_prune(sessions, NOW, PrunePolicy(older_than=age)))
    assert both == by_keep & by_age


def total_size(sessions: list[SessionInfo]) -> int:
    return sum(s.checkpoint_size or 0 for s in sessions)


@given(scans(), budgets)
def test_a_budget_alone_removes_the_oldest_and_no_more_than_it_needs(
    sessions: list[SessionInfo], budget: int
) -> None:
    removed = plan_prune(sessions, NOW, PrunePolicy(max_total_size=budget))
    left = [s for s in sessions if s not in removed]
    sized = [s for s in in_prune_order(not_held(sessions)) if s.checkpoint_size]
    # Met, or nothing more could go: everything left that frees space is held.
    assert total_size(left) <= budget or all(s in removed for s in sized)
    # Never more than needed: keeping the youngest one removed breaks the budget.
    if removed:
        assert all(s.checkpoint_size for s in removed)
        assert total_size(left) + (removed[0].checkpoint_size or 0) > budget
    # Youngest kept first: what goes is the oldest stretch of what frees space.
    assert removed == sized[len(sized) - len(removed) :]


@given(scans(), keeps, ages, budgets)
def test_a_budget_removes_only_what_every_other_limit_allows(
    sessions: list[SessionInfo], keep: int, age: datetime.timedelta, budget: int
) -> None:
    def plan(**limits: object) -> set[SessionInfo]:
        return set(plan_prune(sessions, NOW, PrunePolicy(**limits)))  # type: ignore[arg-type]

    by_size = plan(max_total_size=budget)
    assert plan(keep=keep, max_total_size=budget) == plan(keep=keep) & by_size
    assert plan(older_than=age, max_total_size=budget) == plan(older_than=age) & by_size
    assert plan(keep=keep, older_than=age, max_total_size=budget) == (
        plan(keep=keep) & plan(older_than=age) & by_size
    )


def test_a_budget_counts_held_sessions_but_never_removes_them() -> None:
    def info(name: str, day: int, size: int | None, lock: LockState) -> SessionInfo:
        when = datetime.datetime(2026, 1, day, tzinfo=UTC)
        return SessionInfo(name, f"/r/{name}.session", when, size, lock)

    held = info("held", 1, 600, LockState.HELD)
    oldest = info("oldest", 2, 300, LockState.UNLOCKED)
    empty = info("empty", 3, None, LockState.STALE)
    middle = info("middle", 4, 300, LockState.STALE)
    young = info("young", 5, 300, LockState.UNLOCKED)
    scan = [young, middle, empty, oldest, held]
    # 1500 in all: 1000 needs two of the three that may go, the oldest two.
    assert plan_prune(scan, NOW, PrunePolicy(max_total_size=1000)) == [middle, oldest]
    assert plan_prune(scan, NOW, PrunePolicy(max_total_size=1500)) == []
    # Even with all three gone the held one is over budget: all three go.
    assert plan_prune(scan, NOW, PrunePolicy(max_total_size=0)) == [
        young,
        middle,
        oldest,
    ]
    # keep=2 spares young and middle: the budget stays unmet, as documented.
    assert plan_prune(scan, NOW, PrunePolicy(keep=2, max_total_size=1000)) == [oldest]


@given(scans(), policies)
def test_pruning_what_is_left_removes_nothing_more(
    sessions: list[SessionInfo], policy: PrunePolicy
) -> None:
    removed = set(plan_prune(sessions, NOW, policy))
    left = [s for s in sessions if s not in removed]
    assert plan_prune(left, NOW, policy) == []


@given(scans(), policies, st.randoms())
def test_the_answer_does_not_depend_on_the_input_order(
    sessions: list[SessionInfo], policy: PrunePolicy, rng: Random
) -> None:
    shuffled = list(sessions)
    rng.shuffle(shuffled)
    assert plan_prune(shuffled, NOW, policy) == plan_prune(sessions, NOW, policy)


@given(scans(), policies)
def test_the_answer_is_youngest_first(
    sessions: list[SessionInfo], policy: PrunePolicy
) -> None:
    removed = plan_prune(sessions, NOW, policy)
    assert removed == in_prune_order(removed)
    assert [s.modified for s in removed] == sorted(
        (s.modified for s in removed), reverse=True
    )


def test_ties_in_time_are_broken_by_location() -> None:
    same = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    b, a = (
        SessionInfo(n, f"/r/{n}.session", same, None, LockState.UNLOCKED) for n in "ba"
    )
    assert in_prune_order([b, a]) == [a, b]
    assert plan_prune([b, a], NOW, PrunePolicy(keep=1)) == [b]


def test_stale_sessions_can_go_held_ones_cannot() -> None:
    old = datetime.datetime(2025, 1, 1, tzinfo=UTC)
    stale = SessionInfo("s", "/r/s.session", old, 3, LockState.STALE)
    held = SessionInfo("h", "/r/h.session", old, 3, LockState.HELD)
    assert plan_prune([stale, held], NOW, PrunePolicy(keep=0)) == [stale]


def test_a_policy_without_limits_is_refused() -> None:
    with pytest.raises(ValueError, match="keep, older_than, max_total_size or several"):
        PrunePolicy()


@pytest.mark.parametrize(
    ("keep", "older_than", "error", "max_total_size"),
    [
        (-1, None, ValueError, None),
        (None, datetime.timedelta(seconds=-1), ValueError, None),
        (True, None, TypeError, None),
        (1.5, None, TypeError, None),
        (None, 7, TypeError, None),
        (None, None, ValueError, -1),
        (None, None, TypeError, True),
        (None, None, TypeError, 1.0),
    ],
)
def test_bad_limits_are_refused(
    keep: object, older_than: object, error: type, max_total_size: object
) -> None:
    with pytest.raises(error):
        PrunePolicy(keep=keep, older_than=older_than, max_total_size=max_total_size)  # type: ignore[arg-type]


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_prune([], datetime.datetime(2026, 1, 1), PrunePolicy(keep=1))
