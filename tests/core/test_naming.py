"""Names and paths: the pure functions every session's spelling comes from."""

from __future__ import annotations

import datetime
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionstore._naming import (
    StoragePaths,
    is_session_name,
    is_tombstone_name,
    plan_session_name,
    plan_tombstone_name,
    session_id,
    slug,
)
from sessionstore._session_contents import tombstone_origin

UTC = datetime.timezone.utc
tokens = st.text(alphabet="0123456789abcdef", min_size=1, max_size=16)
times = st.datetimes(timezones=st.just(UTC))


@given(st.text())
def test_slug_never_contains_a_separator_or_nul(prefix: str) -> None:
    assert "/" not in slug(prefix)
    assert "\0" not in slug(prefix)


@given(st.text())
def test_slug_never_starts_with_a_dot(prefix: str) -> None:
    assert not slug(prefix).startswith(".")


@given(st.text(min_size=1))
def test_slug_is_never_empty_for_a_non_empty_prefix(prefix: str) -> None:
    assert slug(prefix)


@given(st.text())
def test_slug_maps_one_character_to_one(prefix: str) -> None:
    assert len(slug(prefix)) == len(prefix)


@given(st.text(alphabet="abcXYZ019._-"))
def test_slug_keeps_safe_characters(prefix: str) -> None:
    expected = "_" + prefix[1:] if prefix.startswith(".") else prefix
    assert slug(prefix) == expected


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("pbox-", "pbox-"),
        ("../x", "_._x"),
        (".hidden", "_hidden"),
        ("a/b", "a_b"),
        ("sp ce", "sp_ce"),
        ("é", "_"),
        ("", ""),
    ],
)
def test_slug_examples(prefix: str, expected: str) -> None:
    assert slug(prefix) == expected


@given(st.text(), times, tokens)
def test_a_session_name_is_one_listed_path_component(
    prefix: str, now: datetime.datetime, token: str
) -> None:
    name = plan_session_name(prefix, now, token)
    assert os.sep not in name
    assert name not in (".", "..")
    assert is_session_name(name)
    assert not is_tombstone_name(name)


@given(st.text(), times, tokens, tokens)
def test_different_tokens_give_different_names(
    prefix: str, now: datetime.datetime, a: str, b: str
) -> None:
    assert (plan_session_name(prefix, now, a) == plan_session_name(prefix, now, b)) == (
        a == b
    )


def test_session_name_layout() -> None:
    now = datetime.datetime(2026, 11, 28, 0, 13, 24, tzinfo=UTC)
    assert (
        plan_session_name("pbox-", now, "abc123")
        == "pbox-20261128T001324Z-abc123.session"
    )


def test_session_name_is_in_utc_whatever_the_zone() -> None:
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    now = datetime.datetime(2026, 11, 28, 2, 0, 0, tzinfo=plus_two)
    assert plan_session_name("", now, "t") == "20261128T000000Z-t.session"


def test_session_name_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_session_name("p", datetime.datetime(2026, 1, 1), "t")


@pytest.mark.parametrize("token", ["", "../x", ".t", "a/b"])
def test_session_name_refuses_an_unsafe_token(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        plan_session_name("p", datetime.datetime.now(UTC), token)


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("x/pbox-abc.session", "pbox-abc"),
        ("/abs/pbox-abc.session/", "pbox-abc"),
        ("plain", "plain"),
        ("a.b.session", "a.b"),
    ],
)
def test_session_id(location: str, expected: str) -> None:
    assert session_id(location) == expected


@pytest.mark.parametrize(
    ("name", "listed"),
    [
        ("a.session", True),
        (".a.session", False),
        ("a.session.x", False),
        ("session", False),
    ],
)
def test_is_session_name(name: str, listed: bool) -> None:
    assert is_session_name(name) is listed


@given(st.text(alphabet="abc-.", min_size=1).map(lambda s: s + ".session"), tokens)
def test_a_tombstone_is_hidden_and_recognised(name: str, token: str) -> None:
    tombstone = plan_tombstone_name(name, token)
    assert not is_session_name(tombstone)
    assert is_tombstone_name(tombstone)


def test_storage_paths() -> None:
    paths = StoragePaths.of("/r/s.session")
    assert paths == StoragePaths(
        location="/r/s.session",
        checkpoint="/r/s.session/session",
        next="/r/s.session/session.next",
        slots="/r/s.session/session.slots",
    )


@given(st.text(min_size=200, max_size=400), times, tokens)
def test_a_long_prefix_still_leaves_room_for_the_tombstone(
    prefix: str, now: datetime.datetime, token: str
) -> None:
    name = plan_session_name(prefix, now, token)
    assert len(plan_tombstone_name(name, "ffffffff").encode()) <= 255


# Names a file system may hold: no separator, no NUL, at most 255 bytes; many
# of them long enough that a tombstone could not keep them whole.
entry_names = (
    st.tuples(
        st.integers(0, 247),
        st.text(st.characters(codec="utf-8", blacklist_characters="/\0"), max_size=20),
    )
    .map(lambda parts: "p" * parts[0] + parts[1] + ".session")
    .filter(lambda name: len(os.fsencode(name)) <= 255 and is_session_name(name))
)


@given(entry_names, st.text(alphabet="0123456789abcdef", min_size=8, max_size=8))
def test_a_tombstone_fits_any_name_and_is_read_back_strictly(
    name: str, token: str
) -> None:
    tombstone = plan_tombstone_name(name, token)
    assert len(os.fsencode(tombstone)) <= 255
    origin = tombstone_origin(tombstone)
    assert origin is not None
    assert os.fsencode(name).startswith(os.fsencode(origin))
    assert tombstone_origin(tombstone[1:]) is None
    assert tombstone_origin(tombstone + "0") is None
