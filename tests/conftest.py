"""Shared fixtures: every behavioural test runs once per writer backend."""

from __future__ import annotations

import os
import shutil
import subprocess
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


@pytest.fixture(scope="session")
def native() -> _backend.Backend:
    """The native backend itself, for tests that compare it with the fallback."""
    return _load("native")


@pytest.fixture(scope="session")
def strace() -> str:
    """The strace binary, once it has shown it can trace a child here."""
    path = shutil.which("strace")
    if path is None:
        pytest.skip("strace is not installed (.ci/run installs it)")
    probe = subprocess.run(
        [path, "-f", "-o", "/dev/null", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.strip()}")
    return path
