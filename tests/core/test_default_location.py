"""The default repository location: a pure function of what it is given."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import SessionStorageRepository
from sessionstore._default_location import default_location

HOME = "/home/u"
CWD = "/work/dir"


def test_unset_everything_uses_the_home_cache() -> None:
    assert default_location({}, HOME, CWD) == "/home/u/.cache/plainbox/sessions"


def test_xdg_cache_home_is_used_when_set() -> None:
    env = {"XDG_CACHE_HOME": "/xdg"}
    assert default_location(env, HOME, CWD) == "/xdg/plainbox/sessions"


def test_an_empty_xdg_cache_home_counts_as_unset() -> None:
    env = {"XDG_CACHE_HOME": ""}
    assert default_location(env, HOME, CWD) == "/home/u/.cache/plainbox/sessions"


def test_a_relative_xdg_cache_home_is_kept_relative() -> None:
    env = {"XDG_CACHE_HOME": "rel/cache"}
    assert default_location(env, HOME, CWD) == "rel/cache/plainbox/sessions"


def test_the_repository_variable_wins_and_is_made_absolute() -> None:
    env = {"PLAINBOX_SESSION_REPOSITORY": "repo/../sessions", "XDG_CACHE_HOME": "/x"}
    assert default_location(env, HOME, CWD) == "/work/dir/sessions"


def test_an_absolute_repository_variable_is_kept() -> None:
    env = {"PLAINBOX_SESSION_REPOSITORY": "/srv/sessions"}
    assert default_location(env, HOME, CWD) == "/srv/sessions"


def test_an_empty_repository_variable_counts_as_unset() -> None:
    env = {"PLAINBOX_SESSION_REPOSITORY": ""}
    assert default_location(env, HOME, CWD) == "/home/u/.cache/plainbox/sessions"


def test_the_application_name_names_the_variable_and_the_folder() -> None:
    env = {"PLAINBOX_SESSION_REPOSITORY": "/nope", "CHECKBOX_SESSION_REPOSITORY": "/c"}
    assert default_location(env, HOME, CWD, app_name="checkbox") == "/c"
    assert default_location({}, HOME, CWD, app_name="checkbox") == (
        "/home/u/.cache/checkbox/sessions"
    )


@given(st.dictionaries(st.sampled_from(["XDG_CACHE_HOME", "HOME", "OTHER"]), st.text()))
def test_without_the_repository_variable_it_ends_in_app_sessions(
    env: dict[str, str],
) -> None:
    env = {k: v.replace("\0", "") for k, v in env.items()}
    assert default_location(env, HOME, CWD).endswith(
        os.path.join("plainbox", "sessions")
    )


def test_the_repository_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    monkeypatch.setenv("PLAINBOX_SESSION_REPOSITORY", os.fspath(tmp_path))
    assert SessionStorageRepository.get_default_location() == os.fspath(tmp_path)
    assert SessionStorageRepository().location == os.fspath(tmp_path)
    monkeypatch.delenv("PLAINBOX_SESSION_REPOSITORY")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert SessionStorageRepository().location == "/xdg/plainbox/sessions"
