"""A session held by another process, through ``hold()``, while a test needs it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

_HOLD = """
import sys, sessionstore
with sessionstore.SessionStorage(sys.argv[1]).hold():
    print("holding", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def held_elsewhere(location: str, *marks: str) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the session at ``location`` inside the block.

    ``marks`` are extra arguments on its command line. It lets go (and exits)
    when the block ends.
    """
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD, location, *marks],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "holding\n"
        yield process
    finally:
        process.communicate("", timeout=60)
