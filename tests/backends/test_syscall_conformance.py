"""Both backends issue the syscalls of the save plan, in the plan's order.

A child process saves once under ``strace -f``; the calls that touch the session
(opens, flock, writes, flushes, closes, renames, unlinks) between two marker
calls are compared with what ``plan_save()`` says, step by step. Any extra call
of those kinds (a second fsync, a writev, a stray unlink) is a mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest
from syscall_traces import (
    TRACED,
    between_markers,
    describe,
    expected_lines,
    marked_save_script,
    parse_trace,
    run_traced,
)

from sessionstore import Durability, SessionStorage
from sessionstore._save_plan import SaveStep, plan_save

_CHILD: Final = marked_save_script(
    """
from sessionstore import Durability, SessionStorage

location, durability, size, warm_up = sys.argv[1:]
# A save elsewhere first, so every import and cache is ready before the trace.
SessionStorage(warm_up, durability=Durability[durability]).save_checkpoint(b"warm")
storage = SessionStorage(location, durability=Durability[durability])
size = int(size)
data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
"""
)


def traced_save(
    strace: str,
    env: dict[str, str],
    tmp_path: Path,
    storage: SessionStorage,
    size: int,
) -> tuple[list[str], str]:
    """The described calls of one save in a child process, and its printed outcome."""
    warm_up = SessionStorage.create(tmp_path / "warm-up")
    args = [storage.location, storage.durability.name, str(size), warm_up.location]
    return run_traced(
        strace, env, tmp_path / "trace.txt", TRACED, _CHILD, args, storage.location
    )


_SIZE: Final = 200_003


@pytest.mark.parametrize("durability", list(Durability))
def test_save_issues_the_plan_s_syscalls_in_order(
    strace: str,
    backend: str,
    backend_env: dict[str, str],
    tmp_path: Path,
    durability: Durability,
) -> None:
    storage = SessionStorage.create(tmp_path / "repo", durability=durability)

    lines, outcome = traced_save(strace, backend_env, tmp_path, storage, _SIZE)

    assert outcome == f"{backend} saved"
    assert lines == expected_lines(plan_save(durability), _SIZE)


@pytest.mark.parametrize("durability", list(Durability))
def test_failed_rename_unlinks_next_and_closes_the_directory(
    strace: str,
    backend: str,
    backend_env: dict[str, str],
    tmp_path: Path,
    durability: Durability,
) -> None:
    storage = SessionStorage.create(tmp_path / "repo", durability=durability)
    # rename(2) refuses to replace a non-empty directory.
    (Path(storage.session_file) / "inside").mkdir(parents=True)
    plan = plan_save(durability)
    renamed_at = plan.steps.index(SaveStep.RENAME_NEXT)

    lines, outcome = traced_save(strace, backend_env, tmp_path, storage, _SIZE)

    assert outcome == f"{backend} IsADirectoryError"
    assert lines == [
        *expected_lines(plan, _SIZE)[:renamed_at],
        "renameat(dir, session.next, dir, session) -> EISDIR",
        "unlinkat(dir, session.next, 0)",
        "close(dir)",
    ]
    assert [p.name for p in Path(storage.location).iterdir()] == ["session"]


def test_describe_reads_strace_lines() -> None:
    text = "\n".join(
        [
            "7 close(-4242) = -1 EBADF (Bad file descriptor)",
            '7 openat(AT_FDCWD, "/s", O_RDONLY|O_CLOEXEC|O_DIRECTORY) = 3',
            "7 flock(3, LOCK_EX|LOCK_NB)         = 0",
            '7 openat(3, "session.next", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 4',
            '7 write(4, "ab, \\"c"..., 10) = 6',
            '7 write(4, "d", 4) = 4',
            '7 renameat2(3, "session.next", 3, "session", 0) = -1 EXDEV (Cross)',
            "7 close(-4343) = -1 EBADF (Bad file descriptor)",
            "7 +++ exited with 0 +++",
        ]
    )

    lines = describe(between_markers(parse_trace(text)), "/s")

    assert lines == [
        "openat(cwd, <location>, O_CLOEXEC|O_DIRECTORY|O_RDONLY)",
        "flock(dir, LOCK_EX|LOCK_NB)",
        "openat(dir, session.next, O_CLOEXEC|O_CREAT|O_EXCL|O_WRONLY, 0600)",
        "write(session.next, 10 bytes)",
        "renameat(dir, session.next, dir, session) -> EXDEV",
    ]
