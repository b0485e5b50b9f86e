"""Shared fixtures: every behavioural test runs once per writer backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionstore import SessionStorage, _backend


def _load(name: str) -> _backend.Backend:
    if name == "python":
        return _backend.PYTHON
    try:
        return _backend.load_native()
    except ImportError as exc:
        # The extension is part of the package: a suite without it has not
        # tested what ships, so this fails instead of skipping.
        pytest.fail(f"the native backend cannot be imported: {exc}")


@pytest.fixture(scope="session", params=list(_backend.NAMES))
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The writer backend every storage in the test uses (its name)."""
    name: str = request.param
    chosen = _load(name)
    previous = _backend.active.current
    _backend.active.current = chosen
    try:
        yield name
    finally:
        _backend.active.current = previous


@pytest.fixture
def backend_env(backend: str) -> dict[str, str]:
    """The environment a child process needs to use the same backend."""
    return {**os.environ, _backend.ENV_VAR: backend}


@pytest.fixture
def storage(backend: str, tmp_path: Path) -> SessionStorage:
    """A new, empty session in a fresh repository, on the active backend."""
    return SessionStorage.create(tmp_path / "repo")
