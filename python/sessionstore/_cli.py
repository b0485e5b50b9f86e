"""The ``sessionstore`` command: see, inspect, prune and benchmark a session repository.

Every subcommand takes ``--repo PATH`` (default: the default location). A user
mistake (a bad argument, an unknown session, a missing repository) prints one
line on stderr and exits 2 for a usage error, 1 for anything that went wrong
while running; the program's own bugs are the only tracebacks.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn

from . import __version__, _backend
from ._bench import DEFAULT_BUDGET, DEFAULT_SIZES, BenchRow, run_save_benchmark
from ._doctor import (
    TMPFILES_DIRS,
    DoctorFacts,
    Finding,
    Severity,
    decide,
    needs_attention,
)
from ._doctor_facts import gather, now
from ._errors import CorruptCheckpointError, oneline
from ._lock_holder import LockHolder
from ._lock_state import LockState
from ._naming import SESSION_SUFFIX
from ._prune import PrunePolicy
from ._repository import SessionStorageRepository, describe, prune_sessions
from ._session_info import CheckpointStatus, SessionInfo
from ._storage import SessionStorage
from ._terminal import printable
from ._units import format_seconds, format_size

PROG: Final = "sessionstore"

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
# What a shell reports for a process killed by SIGINT; Ctrl-C is no error of ours.
EXIT_INTERRUPTED: Final = 130

_DURATION_UNITS: Final = {
    "s": datetime.timedelta(seconds=1),
    "m": datetime.timedelta(minutes=1),
    "h": datetime.timedelta(hours=1),
    "d": datetime.timedelta(days=1),
    "w": datetime.timedelta(weeks=1),
}
_DURATION: Final = re.compile(r"(?:\d+[smhdw])+")
_DURATION_PART: Final = re.compile(r"(\d+)([smhdw])")

_SIZE_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# bench holds two checkpoints of each size in memory; beyond this it would
# fail with MemoryError rather than measure anything.
MAX_BENCH_SIZE: Final = 1 << 30
_SIZE: Final = re.compile(r"(\d+)([KMGT]?)(?:i?B)?", re.IGNORECASE)


class UserError(Exception):
    """A mistake of the user's that the command reports in one line and exit 1."""


def parse_duration(text: str) -> datetime.timedelta:
    """``30s``, ``15m``, ``12h``, ``7d``, ``2w`` or a sum of them (``1d12h``).

    A bare number is refused: nobody should have to guess whether ``7`` means
    seconds or days before a prune.
    """
    if not _DURATION.fullmatch(text):
        raise ValueError(
            f"bad duration {text!r}: "
            "use a number and a unit, e.g. 30s, 15m, 12h, 7d, 2w"
        )
    total = datetime.timedelta(0)
    try:
        for count, unit in _DURATION_PART.findall(text):
            total += int(count) * _DURATION_UNITS[unit]
    except OverflowError:
        raise ValueError(f"bad duration {text!r}: longer than any date") from None
    return total


def parse_size(text: str) -> int:
    """A byte count: ``4096``, ``4K``, ``64KiB``, ``1M``, ``1G``; at least one byte."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(
            f"bad size {text!r}: use bytes or K, M, G, T, e.g. 4096, 64K, 1M"
        )
    size = int(match[1]) * _SIZE_UNITS[match[2].upper()]
    if size < 1:
        raise ValueError(f"bad size {text!r}: a checkpoint has at least one byte")
    return size


def info_as_json(info: SessionInfo) -> dict[str, Any]:
    """One session as ``list --json`` and ``show --json`` print it."""
    return {
        "id": info.id,
        "location": info.location,
        # isoformat's +00:00 rather than Z: datetime.fromisoformat reads it on 3.10.
        "modified": info.modified.astimezone(datetime.timezone.utc).isoformat(),
        "checkpoint_size": info.checkpoint_size,
        "lock": info.lock.value,
        "checkpoint": info.checkpoint.value,
        "problem": info.problem,
        "unrecognised": list(info.unrecognised),
        "holder": None if info.holder is None else holder_as_json(info.holder),
    }


def holder_as_json(holder: LockHolder) -> dict[str, Any]:
    """A lock's holder as ``--json`` prints it."""
    return {
        "pid": holder.pid,
        "command": list(holder.command),
        "started": holder.started.isoformat(),
    }


def describe_lock(info: SessionInfo) -> str:
    """``unlocked``, ``stale``, ``held`` or ``held by pid 4242 (...) since ...``."""
    if info.holder is None:
        return info.lock.value
    return f"{info.lock.value} by {info.holder.describe()}"


def format_columns(
    rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()
) -> str:
    """Rows of cells in columns padded to their widest cell, ``right`` right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join(line(row) for row in rows)


def _modified(info: SessionInfo) -> str:
    return info.modified.strftime("%Y-%m-%d %H:%M:%S")


def _size(info: SessionInfo) -> str:
    if info.checkpoint_size is not None:
        return format_size(info.checkpoint_size)
    if info.checkpoint is CheckpointStatus.NEVER_SAVED:
        return "-"
    return info.checkpoint.name


# How many of a directory's unrecognised entries a note names.
_NAMED_ENTRIES: Final = 3


def _note(info: SessionInfo) -> str:
    """What is odd about a session, in words (empty when nothing is)."""
    notes = []
    if info.problem is not None:
        notes.append(info.problem)
    if info.unrecognised:
        named = ", ".join(info.unrecognised[:_NAMED_ENTRIES])
        more = len(info.unrecognised) - _NAMED_ENTRIES
        named += f" and {more} more" if more > 0 else ""
        notes.append(f"not recognised as a session (holds {named}): prune spares it")
    return printable("; ".join(notes))


def sessions_table(infos: Sequence[SessionInfo]) -> str:
    """The table ``list`` prints; a NOTE column when a session is odd."""
    rows = [
        (printable(i.id), _modified(i), _size(i), printable(describe_lock(i)), _note(i))
        for i in infos
    ]
    header = ("ID", "MODIFIED (UTC)", "SIZE", "LOCK", "NOTE")
    if not any(row[4] for row in rows):
        return format_columns([header[:4], *(row[:4] for row in rows)], frozenset({2}))
    return format_columns([header, *rows], right=frozenset({2}))


def bench_table(rows: Sequence[BenchRow]) -> str:
    """The table ``bench`` prints."""
    cells = [
        (
            format_size(r.size),
            r.durability.value,
            str(r.saves),
            format_seconds(r.median),
            format_seconds(r.p90),
        )
        for r in rows
    ]
    header = ("SIZE", "DURABILITY", "SAVES", "MEDIAN", "P90")
    return format_columns([header, *cells], right=frozenset({0, 2, 3, 4}))


NOT_A_DIRECTORY: Final = "session repository is not a directory"


def _repository(args: argparse.Namespace) -> SessionStorageRepository:
    """The repository ``--repo`` names; one that is not a directory is refused."""
    repo = SessionStorageRepository(args.repo)
    if os.path.exists(repo.location) and not os.path.isdir(repo.location):
        raise UserError(f"{NOT_A_DIRECTORY}: {repo.location}")
    return repo


def _existing_repository(args: argparse.Namespace) -> SessionStorageRepository:
    repo = _repository(args)
    if not os.path.isdir(repo.location):
        raise UserError(f"no session repository at {repo.location}")
    return repo


def resolve(repo: SessionStorageRepository, ident: str) -> str:
    """The location of the session ``ident`` names in ``repo``.

    ``ident`` is an id (``pbox-...``), a directory name (``pbox-....session``),
    the unique start of an id, as ``list`` shows them, or the session's path,
    as ``list --json`` prints it. A path to anywhere but a session directly
    inside the repository is refused: the command only ever touches those.
    """
    if "/" in ident.rstrip("/"):
        ident = _name_in(repo, ident)
    if not ident or "/" in ident or ident.startswith(".") or "\0" in ident:
        raise UserError(f"not a session id: {ident!r}")
    name = ident if ident.endswith(SESSION_SUFFIX) else ident + SESSION_SUFFIX
    location = os.path.join(repo.location, name)
    try:
        st = os.lstat(location)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            return location
    matches = [s for s in repo.get_storage_list() if s.id.startswith(ident)]
    if len(matches) == 1:
        return matches[0].location
    if not matches:
        raise UserError(f"no session {ident!r} in {repo.location}")
    raise UserError(
        f"{ident!r} is the start of {len(matches)} session ids in {repo.location}; "
        "give more of the id"
    )


def _name_in(repo: SessionStorageRepository, path: str) -> str:
    """The name of the session at ``path`` when it sits directly in ``repo``."""
    parent, name = os.path.split(path.rstrip("/"))
    try:
        inside = os.path.samefile(parent or os.curdir, repo.location)
    except OSError:
        inside = False
    if not inside or not name.endswith(SESSION_SUFFIX):
        raise UserError(
            f"not a session id: {path!r} (a path must be of a session "
            f"directly in {repo.location})"
        )
    return name


def bench_as_json(row: BenchRow) -> dict[str, Any]:
    """One row of ``bench --json``: the size in bytes, the latencies in seconds."""
    return {
        "size": row.size,
        "durability": row.durability.value,
        "saves": row.saves,
        "median_seconds": row.median,
        "p90_seconds": row.p90,
    }


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")


def cmd_list(args: argparse.Namespace) -> int:
    repo = _repository(args)
    infos = repo.scan()
    if args.json:
        _write(json.dumps([info_as_json(i) for i in infos], indent=2))
        return EXIT_OK
    _write(sessions_table(infos))
    total = sum(i.checkpoint_size or 0 for i in infos)
    noun = "session" if len(infos) == 1 else "sessions"
    _write(
        f"{len(infos)} {noun}, {format_size(total)} of checkpoints, "
        f"in {printable(repo.location)}"
    )
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    repo = _existing_repository(args)
    try:
        info = describe(resolve(repo, args.id))
    except FileNotFoundError:
        raise UserError(f"session {args.id!r} vanished from {repo.location}") from None
    if args.json:
        _write(json.dumps(info_as_json(info), indent=2))
        return EXIT_OK
    if info.checkpoint_size is not None:
        size = f"{info.checkpoint_size} bytes ({format_size(info.checkpoint_size)})"
    elif info.checkpoint is CheckpointStatus.NEVER_SAVED:
        size = "none saved"
    else:
        size = info.checkpoint.value
    note = _note(info)
    rows = [
        ("id", printable(info.id)),
        ("location", printable(info.location)),
        ("modified", info.modified.isoformat()),
        ("checkpoint", size),
        ("lock", printable(describe_lock(info))),
        *([("note", note)] if note else []),
    ]
    _write(format_columns(rows))
    return EXIT_OK


def cmd_cat(args: argparse.Namespace) -> int:
    repo = _existing_repository(args)
    storage = SessionStorage(resolve(repo, args.id))
    try:
        data = storage.load_checkpoint()
    except FileNotFoundError:
        raise UserError(f"session {args.id!r} vanished from {repo.location}") from None
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    repo = _repository(args)
    policy = PrunePolicy(
        keep=args.keep, older_than=args.older_than, max_total_size=args.max_size
    )
    verb = "would remove" if args.dry_run else "removed"
    # A line per session as it goes: when a removal fails, the error comes
    # after the lines of those that went.
    count = 0
    for info in prune_sessions(repo, policy, dry_run=args.dry_run):
        if info.leftover:
            what = os.path.basename(info.location)
            _write(f"{verb} {printable(what)}  (leftover of an interrupted removal)")
        else:
            _write(
                f"{verb} {printable(info.id)}  "
                f"({_modified(info)} UTC, {_size(info)}, {info.lock.value})"
            )
        sys.stdout.flush()
        count += 1
    noun = "session" if count == 1 else "sessions"
    suffix = " (dry run: nothing was removed)" if args.dry_run else ""
    _write(f"{verb} {count} {noun} from {printable(repo.location)}{suffix}")
    return EXIT_OK


def _holder_of(storage: SessionStorage) -> str:
    holder = storage.holder()
    return "a live writer" if holder is None else holder.describe()


def cmd_break_lock(args: argparse.Namespace) -> int:
    repo = _existing_repository(args)
    storage = SessionStorage(resolve(repo, args.id))
    if not args.force and storage.break_stale_lock():
        _write(printable(f"removed the stale lock of {storage.id}"))
        return EXIT_OK
    state = storage.lock_state()
    if state is LockState.UNLOCKED:
        _write(printable(f"{storage.id} is not locked: nothing to break"))
        return EXIT_OK
    was = state.value if state is LockState.STALE else f"held by {_holder_of(storage)}"
    has_next = os.path.lexists(storage.paths.next)
    if state is LockState.HELD and not has_next:
        # A holder between saves (``hold()``) has the directory locked and no
        # session.next: there is no file whose removal would free anything.
        raise UserError(
            f"{storage.id} is {was}, between saves: there is no session.next "
            "to remove; the lock goes when the holder closes the session or exits"
        )
    if state is LockState.STALE and not args.force:
        raise UserError(f"{storage.id}: its lock changed while breaking it; run again")
    if not args.force:
        raise UserError(
            f"{storage.id} is {was}, inside a save: not broken "
            "(--force removes its session.next anyway)"
        )
    try:
        storage.break_lock()
    except FileNotFoundError:
        _write(printable(f"{storage.id} is not locked: nothing to break"))
        return EXIT_OK
    _write(printable(f"removed the lock file of {storage.id} (forced; it was {was})"))
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    if args.dir is not None:
        if not os.path.isdir(args.dir):
            raise UserError(f"no directory {args.dir}")
        base = args.dir
    else:
        base = _repository(args).location
    backend = _backend.active.current.name

    def started(location: str) -> None:
        if args.json:
            return
        _write(
            f"save latency, {backend} backend, in {printable(location)} "
            "(removed afterwards)"
        )
        sys.stdout.flush()

    rows = run_save_benchmark(
        base, sizes=args.sizes, budget=args.budget, started=started
    )
    if args.json:
        _write(json.dumps([bench_as_json(row) for row in rows], indent=2))
    else:
        _write(bench_table(rows))
    return EXIT_OK


def doctor_as_json(facts: DoctorFacts, findings: Sequence[Finding]) -> dict[str, Any]:
    """What ``doctor --json`` prints (the shape docs/operations.md documents)."""
    mount, device, latency, sessions, rule = (
        facts.mount,
        facts.device,
        facts.latency,
        facts.sessions,
        facts.tmpfiles,
    )
    return {
        "repository": facts.repository,
        "exists": facts.exists,
        "needs_attention": needs_attention(findings),
        "findings": [
            {
                "code": f.code,
                "severity": f.severity.value,
                "summary": f.summary,
                "action": f.action,
            }
            for f in findings
        ],
        "facts": {
            "checked_path": facts.checked_path,
            "statfs_type": None if facts.fs_magic is None else f"0x{facts.fs_magic:x}",
            "filesystem": None
            if mount is None
            else {
                "type": mount.fs_type,
                "mount_point": mount.mount_point,
                "source": mount.source,
                "options": sorted(mount.options),
                "read_only": mount.read_only,
            },
            "device": None
            if device is None
            else {
                "name": device.device,
                "write_cache": device.write_cache,
                "fua": device.fua,
            },
            "free_bytes": facts.free_bytes,
            "save_latency": None
            if latency is None
            else {
                "saves": latency.saves,
                "size": latency.size,
                "median_seconds": latency.median,
                "p99_seconds": latency.p99,
                "flush_median_seconds": latency.flush_median,
            },
            "sessions": None
            if sessions is None
            else {
                "count": sessions.count,
                "largest_checkpoint": sessions.largest_checkpoint,
                "stale": list(sessions.stale),
                "tombstones": list(sessions.tombstones),
                "damaged": list(sessions.damaged),
                "unreadable": list(sessions.unreadable),
            },
            "tmpfiles": None
            if rule is None
            else {
                "type": rule.rule.type,
                "path": rule.rule.path,
                "age_seconds": rule.age.total_seconds(),
                "sessions_spared": rule.spares_sessions,
                "origin": rule.rule.origin,
            },
        },
    }


def doctor_report(facts: DoctorFacts, findings: Sequence[Finding]) -> str:
    """What ``doctor`` prints: one line per finding, what to do under it."""
    state = "" if facts.exists else " (does not exist yet)"
    lines = [f"repository: {printable(facts.repository)}{state}"]
    for f in findings:
        label = (
            f.severity.value.upper()
            if f.severity is Severity.ATTENTION
            else (f.severity.value)
        )
        lines.append(f"{label:<10} {f.code}: {printable(f.summary)}")
        if f.action is not None:
            lines.append(f"{'':<10} what to do: {printable(f.action)}")
    count = sum(f.severity is Severity.ATTENTION for f in findings)
    lines.append(
        "nothing needs attention"
        if count == 0
        else f"{count} finding{'s need' if count > 1 else ' needs'} attention"
    )
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace) -> int:
    location = SessionStorageRepository(args.repo).location
    facts = gather(
        location,
        measure=not args.no_latency,
        tmpfiles_dirs=args.tmpfiles_dir or TMPFILES_DIRS,
    )
    findings = decide(facts, now())
    if args.json:
        _write(json.dumps(doctor_as_json(facts, findings), indent=2))
    else:
        _write(doctor_report(facts, findings))
    return EXIT_FAILED if needs_attention(findings) else EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n"
        )


def _argument_type(
    parse: Callable[[str], Any],
) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _keep(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"bad --keep {text!r}: give a whole number") from None
    if value < 0:
        raise ValueError(f"bad --keep {value}: must not be negative")
    return value


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"bad --budget {text!r}: give seconds, e.g. 5") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"bad --budget {text!r}: give a positive number of seconds")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(parse_size(part) for part in text.split(","))
    for part, size in zip(text.split(","), sizes, strict=True):
        if size > MAX_BENCH_SIZE:
            raise ValueError(f"bad size {part!r}: bench measures up to 1G")
    # One row per size, however often (or however spelled: 1K, 1024) it is given.
    return tuple(dict.fromkeys(sizes))


def _max_size(text: str) -> int:
    return 0 if text.strip() == "0" else parse_size(text)


def _repo(text: str) -> str:
    if not text:
        raise ValueError("bad path '': give the repository's path")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The command line, every subcommand with ``--help`` and ``--repo``."""
    parser = _Parser(
        prog=PROG,
        description="See, inspect, prune and benchmark a repository of test sessions.",
    )
    repo_help = (
        "the session repository (default: $PLAINBOX_SESSION_REPOSITORY, else "
        "${XDG_CACHE_HOME:-~/.cache}/plainbox/sessions)"
    )
    parser.add_argument(
        "--repo", metavar="PATH", type=_argument_type(_repo), help=repo_help
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _Parser(add_help=False)
    # SUPPRESS: a subcommand without --repo keeps the one given before it.
    common.add_argument(
        "--repo",
        metavar="PATH",
        type=_argument_type(_repo),
        default=argparse.SUPPRESS,
        help=repo_help,
    )

    def command(
        name: str,
        run: Callable[[argparse.Namespace], int],
        text: str,
        details: str = "",
    ) -> Any:
        description = f"{text} {details}".strip()
        p = sub.add_parser(name, parents=[common], help=text, description=description)
        p.set_defaults(run=run, parser=p)
        return p

    p = command("list", cmd_list, "List the sessions, youngest first.")
    p.add_argument("--json", action="store_true", help="print a JSON array")

    p = command("show", cmd_show, "Show one session's details.")
    p.add_argument("id", metavar="ID", help="a session id, or its unique start")
    p.add_argument("--json", action="store_true", help="print a JSON object")

    p = command("cat", cmd_cat, "Write a session's checkpoint bytes to stdout.")
    p.add_argument("id", metavar="ID", help="a session id, or its unique start")

    p = command(
        "prune",
        cmd_prune,
        "Remove old sessions, never one a live writer holds.",
        "With several limits, a session goes only when each allows it: outside "
        "the N youngest, older than AGE, and among the oldest that must go to "
        "bring the total to SIZE. "
        "Also deletes leftovers of removals a crash interrupted.",
    )
    p.add_argument(
        "--keep", metavar="N", type=_argument_type(_keep), help="spare the N youngest"
    )
    p.add_argument(
        "--older-than",
        metavar="AGE",
        type=_argument_type(parse_duration),
        help="spare those modified within AGE: 30s, 15m, 12h, 7d, 2w, or a sum: 1d12h",
    )
    p.add_argument(
        "--max-size",
        metavar="SIZE",
        type=_argument_type(_max_size),
        help="remove the oldest sessions, as few as bring the checkpoints' "
        "total down to SIZE: 500M, 2G, 1T",
    )
    p.add_argument("--dry-run", action="store_true", help="only say what would go")

    p = command(
        "break-lock",
        cmd_break_lock,
        "Remove a session's stale lock (left by a writer that died).",
    )
    p.add_argument("id", metavar="ID", help="a session id, or its unique start")
    p.add_argument(
        "--force",
        action="store_true",
        help="remove session.next even if a live writer holds the lock",
    )

    p = command(
        "bench",
        cmd_bench,
        "Measure save latency in a temporary session, removed afterwards.",
    )
    p.add_argument(
        "--dir",
        metavar="DIR",
        help="make the temporary session in DIR (default: the repository)",
    )
    p.add_argument(
        "--sizes",
        metavar="LIST",
        type=_argument_type(_sizes),
        default=DEFAULT_SIZES,
        help="checkpoint sizes, comma-separated (default: 1K,64K,1M)",
    )
    p.add_argument(
        "--budget",
        metavar="SECONDS",
        type=_argument_type(_budget),
        default=DEFAULT_BUDGET,
        help=f"how long to measure (default: {DEFAULT_BUDGET:g})",
    )
    p.add_argument("--json", action="store_true", help="print a JSON array")

    p = command(
        "doctor",
        cmd_doctor,
        "Check whether this repository can keep its promises.",
        "Looks at the filesystem and its mount options, the disk's write cache, "
        "the latency of a short burst of durable saves (in a temporary session, "
        "removed afterwards), free space, the sessions, and the tmpfiles.d rule "
        "that ages the directory. Exits 1 when something needs attention.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument(
        "--no-latency",
        action="store_true",
        help="skip the burst of test saves (nothing is written)",
    )
    p.add_argument(
        "--tmpfiles-dir",
        metavar="DIR",
        action="append",
        help="read tmpfiles.d rules from DIR instead of the system's "
        "(repeatable, highest precedence first)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status."""
    # Session names are bytes on disk; one that is not valid text is shown
    # escaped rather than failing the listing.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "prune" and (args.keep, args.older_than, args.max_size) == (
        None,
        None,
        None,
    ):
        args.parser.error("prune needs --keep, --older-than, --max-size or several")
    prog = f"{PROG} {args.command}"
    try:
        status: int = args.run(args)
    except UserError as exc:
        print(f"{prog}: {printable(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep Python's
        # final flush from complaining about the same closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_FAILED
    except OSError as exc:
        print(f"{prog}: {printable(oneline(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except CorruptCheckpointError as exc:
        print(f"{prog}: damaged checkpoint: {printable(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status
