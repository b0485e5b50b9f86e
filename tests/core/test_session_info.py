"""SessionInfo's time: any mtime a filesystem stores becomes an aware datetime."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from sessionstore._session_info import modified_at

UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime.datetime.max.replace(tzinfo=UTC)
EARLIEST = datetime.datetime.min.replace(tzinfo=UTC)
# tmpfs, btrfs and xfs store times of 64-bit seconds: far beyond year 9999.
STORED_NS = st.integers(min_value=-(2**63) * 10**9, max_value=2**63 * 10**9)


@given(STORED_NS, STORED_NS)
def test_every_stored_time_converts_in_order(a: int, b: int) -> None:
    first, second = modified_at(min(a, b)), modified_at(max(a, b))
    assert first.tzinfo is UTC
    assert EARLIEST <= first <= second <= LATEST


@given(st.datetimes(timezones=st.just(UTC)))
def test_a_time_a_datetime_holds_is_kept_to_the_microsecond(
    moment: datetime.datetime,
) -> None:
    micros = (moment - EPOCH) // datetime.timedelta(microseconds=1)
    assert modified_at(micros * 1000 + 999) == moment


def test_times_beyond_what_a_datetime_holds_are_clamped() -> None:
    year_12000_ns = 315_537_897_600 * 10**9
    assert modified_at(year_12000_ns) == LATEST
    assert modified_at(-year_12000_ns) == EARLIEST
