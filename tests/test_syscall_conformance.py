"""Both backends issue the syscalls of the save plan, in the plan's order.

A child process saves once under ``strace -f``; the calls that touch the session
(opens, flock, writes, flushes, closes, renames, unlinks) between two marker
calls are compared with what ``plan_save()`` says, step by step. Any extra call
of those kinds (a second fsync, a writev, a stray unlink) is a mismatch.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

import attrs
import pytest

from sessionstore import Durability, SessionStorage
from sessionstore._save_plan import SavePlan, SaveStep, plan_save

# Every call that could write, flush, name or lock a file: anything of these
# kinds that the plan does not ask for shows up as a difference.
_TRACED: Final = ",".join(
    [
        "open",
        "openat",
        "openat2",
        "creat",
        "flock",
        "fcntl",
        "write",
        "writev",
        "pwrite64",
        "pwritev",
        "pwritev2",
        "fsync",
        "fdatasync",
        "sync_file_range",
        "close",
        "rename",
        "renameat",
        "renameat2",
        "unlink",
        "unlinkat",
    ]
)

# close() of these descriptors fails at once with EBADF: markers in the trace
# around the one save under test, with nothing else of the process in between.
_BEGIN: Final = -4242
_END: Final = -4343

_CHILD: Final = f"""
import os, sys
import sessionstore
from sessionstore import Durability, SessionStorage

location, durability, size, warm_up = sys.argv[1:]
# A save elsewhere first, so every import and cache is ready before the trace.
SessionStorage(warm_up, durability=Durability[durability]).save_checkpoint(b"warm")
storage = SessionStorage(location, durability=Durability[durability])
size = int(size)
data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

def mark(fd):
    try:
        os.close(fd)
    except OSError:
        pass

mark({_BEGIN})
try:
    storage.save_checkpoint(data)
except OSError as exc:
    outcome = type(exc).__name__
else:
    outcome = "saved"
mark({_END})
print(sessionstore.backend, outcome)
"""

_LINE: Final = re.compile(r"^(?:\[pid\s+)?\d+\]?\s+(\w+)\((.*)\)\s+=\s+(-?\w+)(.*)$")
# Signals and exits: "7 --- SIGCHLD {...} ---", "7 +++ exited with 0 +++".
_NOTICE: Final = re.compile(r"^\d+\s+(---|\+\+\+) ")
_ERRNO: Final = re.compile(r"\s*(E[A-Z0-9]+)\b")


@attrs.frozen
class Call:
    """One traced syscall: its name, its arguments as strace prints them, its result."""

    name: str
    args: tuple[str, ...]
    result: str
    error: str | None


def split_args(text: str) -> tuple[str, ...]:
    """strace's argument list split at the commas that separate arguments."""
    args: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in text:
        if quoted:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
            continue
        if char == '"':
            quoted = True
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if current:
        args.append("".join(current).strip())
    return tuple(args)


def parse_trace(text: str) -> list[Call]:
    """The calls of a ``strace -f -o`` file; a line that does not parse is an error."""
    calls = []
    for line in text.splitlines():
        if not line.strip() or _NOTICE.match(line):
            continue
        match = _LINE.match(line)
        if match is None:
            raise AssertionError(f"cannot read this strace line: {line!r}")
        name, args, result, rest = match.groups()
        error = _ERRNO.match(rest)
        calls.append(Call(name, split_args(args), result, error and error.group(1)))
    return calls


def between_markers(calls: list[Call]) -> list[Call]:
    """The calls between the two marker closes (exclusive)."""
    marks = [
        i
        for i, call in enumerate(calls)
        if call.name == "close" and call.args in {(str(_BEGIN),), (str(_END),)}
    ]
    assert len(marks) == 2, f"expected both markers in the trace, found {marks}"
    return calls[marks[0] + 1 : marks[1]]


def _unquote(arg: str) -> str:
    assert arg.startswith('"'), arg
    return arg.strip('"').removesuffix('"...')


def describe(calls: list[Call], location: str) -> list[str]:
    """The calls as comparable lines: descriptors named by what they were opened
    on, flags sorted, and consecutive writes to one file merged into a count."""
    roles: dict[str, str] = {"AT_FDCWD": "cwd"}
    lines: list[str] = []

    def role(fd: str) -> str:
        return roles.get(fd, f"fd {fd}")

    def name(arg: str) -> str:
        path = _unquote(arg)
        return "<location>" if path == location else path

    for call in calls:
        failed = f" -> {call.error}" if call.error else ""
        a = call.args
        if call.name == "openat":
            flags = "|".join(sorted(a[2].split("|")))
            mode = f", {a[3]}" if len(a) > 3 else ""
            target = name(a[1])
            if not call.error:
                roles[call.result] = "dir" if target == "<location>" else target
            lines.append(f"openat({role(a[0])}, {target}, {flags}{mode}){failed}")
        elif call.name == "write" and not call.error:
            written = int(call.result)
            last = lines[-1] if lines else ""
            prefix = f"write({role(a[0])}, "
            if last.startswith(prefix):
                written += int(last.removeprefix(prefix).split()[0])
                lines.pop()
            lines.append(f"{prefix}{written} bytes)")
        elif call.name in {"flock", "fsync", "fdatasync", "close"}:
            rest = "".join(f", {arg}" for arg in a[1:])
            lines.append(f"{call.name}({role(a[0])}{rest}){failed}")
        elif call.name in {"renameat", "renameat2"}:
            extra = a[4:] if a[4:] != ("0",) else ()
            rest = "".join(f", {arg}" for arg in extra)
            lines.append(
                f"renameat({role(a[0])}, {name(a[1])}, {role(a[2])}, {name(a[3])}"
                f"{rest}){failed}"
            )
        elif call.name == "unlinkat":
            lines.append(f"unlinkat({role(a[0])}, {name(a[1])}, {a[2]}){failed}")
        elif call.name == "newfstatat":
            lines.append(f"newfstatat({role(a[0])}, {name(a[1])}, {a[3]}){failed}")
        elif call.name == "pread64":
            lines.append(f"pread64({role(a[0])}, {a[2]}, {a[3]}) = {call.result}")
        elif call.name in {"pwritev", "pwritev2"}:
            lines.append(
                f"{call.name}({role(a[0])}, {a[2]} parts, "
                f"{call.result} bytes at {a[3]}){failed}"
            )
        else:
            lines.append(f"{call.name}({', '.join(a)}) = {call.result}{failed}")
    return lines


def expected_lines(plan: SavePlan, size: int) -> list[str]:
    """What ``describe`` gives for a trace that follows ``plan`` exactly."""
    next_name, target = plan.next_name, plan.target_name
    by_step = {
        SaveStep.OPEN_DIR: "openat(cwd, <location>, O_CLOEXEC|O_DIRECTORY|O_RDONLY)",
        SaveStep.LOCK_DIR: "flock(dir, LOCK_EX|LOCK_NB)",
        SaveStep.CREATE_NEXT: (
            f"openat(dir, {next_name}, O_CLOEXEC|O_CREAT|O_EXCL|O_WRONLY, 0600)"
        ),
        SaveStep.WRITE_NEXT: f"write({next_name}, {size} bytes)",
        SaveStep.FSYNC_NEXT: f"fsync({next_name})",
        SaveStep.CLOSE_NEXT: f"close({next_name})",
        SaveStep.RENAME_NEXT: f"renameat(dir, {next_name}, dir, {target})",
        SaveStep.FSYNC_DIR: "fsync(dir)",
        SaveStep.CLOSE_DIR: "close(dir)",
    }
    return [by_step[step] for step in plan.steps]


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


def traced_save(
    strace: str,
    env: dict[str, str],
    tmp_path: Path,
    storage: SessionStorage,
    size: int,
) -> tuple[list[str], str]:
    """The described calls of one save in a child process, and its printed outcome."""
    warm_up = SessionStorage.create(tmp_path / "warm-up")
    trace = tmp_path / "trace.txt"
    child = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-s",
            "4096",
            "-o",
            str(trace),
            "-e",
            f"trace={_TRACED}",
            sys.executable,
            "-c",
            _CHILD,
            storage.location,
            storage.durability.name,
            str(size),
            warm_up.location,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    calls = between_markers(parse_trace(trace.read_text()))
    return describe(calls, storage.location), child.stdout.strip()


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
