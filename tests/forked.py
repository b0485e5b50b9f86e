"""A test step run in a forked child, as another user if need be, reporting in text."""

from __future__ import annotations

import codecs
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

NOBODY: Final = 65534


def report_from_child(step: Callable[[], str]) -> str:
    """What ``step`` returned when run in a forked child, or how it failed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read_end)
        try:
            report = step()
        except BaseException as exc:
            report = f"failed: {exc!r}"
        os.write(write_end, report.encode(errors="backslashreplace"))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        report = reader.read().decode()
    os.waitpid(pid, 0)
    return report


def as_nobody(step: Callable[[], str]) -> str:
    """``report_from_child`` with the child's user switched to uid 65534 first."""

    def switched() -> str:
        # The codec the lock table is read with, looked up while the
        # interpreter's own files (maybe under /root) can still be read.
        codecs.lookup("ascii")
        os.setuid(NOBODY)
        return step()

    return report_from_child(switched)


@contextmanager
def shared_directory() -> Iterator[Path]:
    """A directory (0755) another user may enter: outside pytest's temporary
    directories, which only root may enter. Removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="sessionstore-other-user-"))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base)
