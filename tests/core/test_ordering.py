"""Youngest first: a total, deterministic order whatever the input order."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from sessionstore._ordering import ListedSession, in_listing_order, sort_key

sessions = st.lists(
    st.builds(
        ListedSession,
        name=st.text(alphabet="abc.", min_size=1, max_size=4),
        mtime_ns=st.integers(0, 5),
    ),
    unique_by=lambda s: s.name,
)


@given(sessions, st.randoms())
def test_the_order_does_not_depend_on_the_input_order(
    listed: list[ListedSession], shuffle: random.Random
) -> None:
    shuffled = list(listed)
    shuffle.shuffle(shuffled)
    assert in_listing_order(shuffled) == in_listing_order(listed)


@given(sessions)
def test_younger_comes_first_and_ties_go_by_name(listed: list[ListedSession]) -> None:
    ordered = in_listing_order(listed)
    for a, b in itertools.pairwise(ordered):
        assert a.mtime_ns > b.mtime_ns or (a.mtime_ns == b.mtime_ns and a.name < b.name)


@given(st.integers(), st.text(), st.integers(), st.text())
def test_the_key_is_total(m1: int, n1: str, m2: int, n2: str) -> None:
    k1, k2 = sort_key(m1, n1), sort_key(m2, n2)
    assert (k1 == k2) == ((m1, n1) == (m2, n2))
    assert (k1 < k2) or (k2 < k1) or (k1 == k2)
