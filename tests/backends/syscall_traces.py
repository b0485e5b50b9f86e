"""Reading ``strace`` output of one save, for the syscall conformance tests.

A child process runs a script whose save is framed by two marker calls,
``close(BEGIN)`` and ``close(END)`` (they fail at once with EBADF), under
``strace -f``; the calls between the markers are parsed and described as
comparable lines: descriptors named by what they were opened on, flags sorted,
consecutive writes to one file merged.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Final

import attrs

from sessionstore._save_plan import SavePlan, SaveStep
from sessionstore._slots_format import FILE_HEADER_SIZE, RECORD_HEADER_SIZE

# Every call that could write, flush, name or lock a file: anything of these
# kinds that the plan does not ask for shows up as a difference.
TRACED: Final = ",".join(
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

# The calls TRACED names, and the reads and lookups of a slotted save.
TRACED_WITH_READS: Final = ",".join(
    [
        TRACED,
        "fstat",
        "newfstatat",
        "statx",
        "read",
        "pread64",
        "lseek",
        "preadv",
        "preadv2",
    ]
)

SLOTS_FILE: Final = "session.slots"

# close() of these descriptors fails at once with EBADF: markers in the trace
# around the one save under test, with nothing else of the process in between.
BEGIN: Final = -4242
END: Final = -4343

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


def _marks(calls: list[Call]) -> list[int]:
    marks = [
        i
        for i, call in enumerate(calls)
        if call.name == "close" and call.args in {(str(BEGIN),), (str(END),)}
    ]
    assert len(marks) == 2, f"expected both markers in the trace, found {marks}"
    return marks


def between_markers(calls: list[Call]) -> list[Call]:
    """The calls between the two marker closes (exclusive)."""
    first, last = _marks(calls)
    return calls[first + 1 : last]


def before_markers(calls: list[Call]) -> list[Call]:
    """The calls before the first marker: where descriptors still open came from."""
    return calls[: _marks(calls)[0]]


def _unquote(arg: str) -> str:
    assert arg.startswith('"'), arg
    return arg.strip('"').removesuffix('"...')


def describe(
    calls: list[Call], location: str, earlier: list[Call] | None = None
) -> list[str]:
    """The calls as comparable lines: descriptors named by what they were opened
    on (in ``calls``, or ``earlier`` for those still open: a held session's),
    flags sorted, and consecutive writes to one file merged into a count."""
    roles: dict[str, str] = {"AT_FDCWD": "cwd"}
    lines: list[str] = []

    def role(fd: str) -> str:
        return roles.get(fd, f"fd {fd}")

    def name(arg: str) -> str:
        path = _unquote(arg)
        return "<location>" if path == location else path

    for call in earlier or []:
        if call.name == "openat" and not call.error:
            roles[call.result] = (
                "dir" if name(call.args[1]) == "<location>" else name(call.args[1])
            )
        elif call.name == "close" and not call.error:
            roles.pop(call.args[0], None)

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
        elif call.name == "fstat" or (
            call.name == "newfstatat" and _unquote(a[1]) == ""
        ):
            # fstat() linked against an older glibc (a manylinux wheel's) makes
            # the older syscall; a newer one, newfstatat of "".
            lines.append(f"fstat({role(a[0])}){failed}")
        elif call.name == "newfstatat":
            lines.append(f"newfstatat({role(a[0])}, {name(a[1])}, {a[3]}){failed}")
        elif call.name == "lseek":
            lines.append(f"lseek({role(a[0])}, {a[1]}, {a[2]})")
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
        SaveStep.OPEN_DIR: (
            "openat(cwd, <location>, O_CLOEXEC|O_DIRECTORY|O_NOFOLLOW|O_RDONLY)"
        ),
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


def slot_reads(slot_size: int, newest: int, length: int) -> list[str]:
    """READ_SLOTS: where the file ends, the head (file header and the first
    record header), the second record header, the newest record's data."""
    head = FILE_HEADER_SIZE + RECORD_HEADER_SIZE
    second = FILE_HEADER_SIZE + slot_size
    data_at = FILE_HEADER_SIZE + newest * slot_size + RECORD_HEADER_SIZE
    return [
        f"lseek({SLOTS_FILE}, 0, SEEK_END)",
        f"pread64({SLOTS_FILE}, {head}, 0) = {head}",
        f"pread64({SLOTS_FILE}, {RECORD_HEADER_SIZE}, {second}) = {RECORD_HEADER_SIZE}",
        f"pread64({SLOTS_FILE}, {length}, {data_at}) = {length}",
    ]


def before_slots() -> dict[SaveStep, list[str]]:
    """The lines of the steps up to OPEN_SLOTS, as ``describe`` gives them."""
    return {
        SaveStep.OPEN_DIR: [
            "openat(cwd, <location>, O_CLOEXEC|O_DIRECTORY|O_NOFOLLOW|O_RDONLY)"
        ],
        SaveStep.LOCK_DIR: ["flock(dir, LOCK_EX|LOCK_NB)"],
        SaveStep.CHECK_NEXT: [
            "newfstatat(dir, session.next, AT_SYMLINK_NOFOLLOW) -> ENOENT"
        ],
        SaveStep.CHECK_REPLACE: [
            "newfstatat(dir, session, AT_SYMLINK_NOFOLLOW) -> ENOENT"
        ],
        SaveStep.OPEN_SLOTS: [
            f"openat(dir, {SLOTS_FILE}, O_CLOEXEC|O_NOATIME|O_NOFOLLOW|O_RDWR)"
        ],
    }


def marked_save_script(setup: str) -> str:
    """A child script: ``setup`` (which defines ``storage`` and ``data``), then
    one save of ``data`` between the markers, then the backend and the outcome
    (``saved`` or the exception's type) printed on stdout."""
    return f"""
import os, sys
import sessionstore
{setup}

def mark(fd):
    try:
        os.close(fd)
    except OSError:
        pass

mark({BEGIN})
try:
    storage.save_checkpoint(data)
except OSError as exc:
    outcome = type(exc).__name__
else:
    outcome = "saved"
mark({END})
print(sessionstore.backend, outcome)
"""


def run_traced(
    strace: str,
    env: dict[str, str],
    trace: Path,
    traced: str,
    script: str,
    args: list[str],
    location: str,
) -> tuple[list[str], str]:
    """Run ``script`` with ``args`` under strace, tracing the calls ``traced``;
    the described calls between the markers, and what the child printed."""
    command = [
        strace, "-f", "-qq", "-s", "4096", "-o", str(trace), "-e", f"trace={traced}",
        sys.executable, "-c", script, *args,
    ]  # fmt: skip
    child = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr
    calls = parse_trace(trace.read_text())
    described = describe(between_markers(calls), location, before_markers(calls))
    return described, child.stdout.strip()
