"""The README's tour runs as written, on both backends."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def tour() -> str:
    """The first Python block of the README: the short tour."""
    match = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert match is not None, "the README has no Python block"
    return match[1]


def test_the_tour_runs_and_leaves_nothing_behind(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**backend_env, "PLAINBOX_SESSION_REPOSITORY": str(tmp_path / "repo")}
    done = subprocess.run(
        [sys.executable, "-c", tour()],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "LockState.UNLOCKED" in done.stdout
    assert list((tmp_path / "repo").iterdir()) == []
