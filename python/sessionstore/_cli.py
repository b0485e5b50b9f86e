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
from ._errors import CorruptCheckpointError
from ._lock_state import LockState
from ._naming import SESSION_SUFFIX
from ._prune import PrunePolicy
from ._repository import SessionStorageRepository, describe, prune_sessions
from ._session_info import SessionInfo
from ._storage import SessionStorage

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

_SIZE_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# bench holds two checkpoints of each size in memory; beyond this it would
# fail with MemoryError rather than measure anything.
MAX_BENCH_SIZE: Final = 1 << 30
_SIZE: Final = re.compile(r"(\d+)([KMG]?)(?:i?B)?", re.IGNORECASE)


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
        raise ValueError(f"bad size {text!r}: use bytes or K, M, G, e.g. 4096, 64K, 1M")
    size = int(match[1]) * _SIZE_UNITS[match[2].upper()]
    if size < 1:
        raise ValueError(f"bad size {text!r}: a checkpoint has at least one byte")
    return size


def format_size(size: int) -> str:
    """A byte count for people: ``512 B``, ``1.5 KiB``, ``3.0 MiB``."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.0f} {unit}" if value.is_integer() else f"{value:.1f} {unit}"


def format_seconds(seconds: float) -> str:
    """A latency for people, in the unit that keeps it between 1 and 1000."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def info_as_json(info: SessionInfo) -> dict[str, Any]:
    """One session as ``list --json`` and ``show --json`` print it."""
    return {
        "id": info.id,
        "location": info.location,
        # isoformat's +00:00 rather than Z: datetime.fromisoformat reads it on 3.10.
        "modified": info.modified.astimezone(datetime.timezone.utc).isoformat(),
        "checkpoint_size": info.checkpoint_size,
        "lock": info.lock.value,
    }


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
    return "-" if info.checkpoint_size is None else format_size(info.checkpoint_size)


def sessions_table(infos: Sequence[SessionInfo]) -> str:
    """The table ``list`` prints."""
    rows = [(i.id, _modified(i), _size(i), i.lock.value) for i in infos]
    header = ("ID", "MODIFIED (UTC)", "SIZE", "LOCK")
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


def _repository(args: argparse.Namespace) -> SessionStorageRepository:
    return SessionStorageRepository(args.repo)


def _existing_repository(args: argparse.Namespace) -> SessionStorageRepository:
    repo = _repository(args)
    try:
        st = os.stat(repo.location)
    except FileNotFoundError:
        raise UserError(f"no session repository at {repo.location}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"not a session repository (not a directory): {repo.location}")
    return repo


def resolve(repo: SessionStorageRepository, ident: str) -> str:
    """The location of the session ``ident`` names in ``repo``.

    ``ident`` is an id (``pbox-...``), a directory name (``pbox-....session``)
    or the unique start of an id, as ``list`` shows them. Never a path: the
    command only ever touches sessions inside the repository.
    """
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
        f"{len(infos)} {noun}, {format_size(total)} of checkpoints, in {repo.location}"
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
    size = (
        "none saved"
        if info.checkpoint_size is None
        else f"{info.checkpoint_size} bytes ({format_size(info.checkpoint_size)})"
    )
    rows = [
        ("id", info.id),
        ("location", info.location),
        ("modified", info.modified.isoformat()),
        ("checkpoint", size),
        ("lock", info.lock.value),
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
    policy = PrunePolicy(keep=args.keep, older_than=args.older_than)
    verb = "would remove" if args.dry_run else "removed"
    # A line per session as it goes: when a removal fails, the error comes
    # after the lines of those that went.
    count = 0
    for info in prune_sessions(repo, policy, dry_run=args.dry_run):
        _write(
            f"{verb} {info.id}  "
            f"({_modified(info)} UTC, {_size(info)}, {info.lock.value})"
        )
        sys.stdout.flush()
        count += 1
    noun = "session" if count == 1 else "sessions"
    suffix = " (dry run: nothing was removed)" if args.dry_run else ""
    _write(f"{verb} {count} {noun} from {repo.location}{suffix}")
    return EXIT_OK


def cmd_break_lock(args: argparse.Namespace) -> int:
    repo = _existing_repository(args)
    storage = SessionStorage(resolve(repo, args.id))
    if args.force:
        before = storage.lock_state()
        try:
            storage.break_lock()
        except FileNotFoundError:
            _write(f"{storage.id} is not locked: nothing to break")
            return EXIT_OK
        _write(f"removed the lock file of {storage.id} (forced; it was {before.value})")
        return EXIT_OK
    if storage.break_stale_lock():
        _write(f"removed the stale lock of {storage.id}")
        return EXIT_OK
    if storage.lock_state() is LockState.HELD:
        raise UserError(
            f"{storage.id} is held by a live writer: not broken "
            "(--force removes session.next anyway)"
        )
    _write(f"{storage.id} is not locked: nothing to break")
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
        _write(f"save latency, {backend} backend, in {location} (removed afterwards)")
        sys.stdout.flush()

    rows = run_save_benchmark(
        base, sizes=args.sizes, budget=args.budget, started=started
    )
    if args.json:
        _write(json.dumps([bench_as_json(row) for row in rows], indent=2))
    else:
        _write(bench_table(rows))
    return EXIT_OK


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
    return sizes


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
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _Parser(add_help=False)
    common.add_argument(
        "--repo",
        metavar="PATH",
        type=_argument_type(_repo),
        help="the session repository (default: "
        "$PLAINBOX_SESSION_REPOSITORY, else "
        "${XDG_CACHE_HOME:-~/.cache}/plainbox/sessions)",
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
        "With both limits, a session goes only when it is outside the N youngest "
        "and older than AGE. Also deletes leftovers of removals a crash interrupted.",
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
    return parser


def _oneline(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    if exc.filename is not None:
        text += f": {exc.filename}"
    if exc.filename2 is not None:
        text += f" -> {exc.filename2}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status."""
    # Session names are bytes on disk; one that is not valid text is shown
    # escaped rather than failing the listing.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "prune" and args.keep is None and args.older_than is None:
        args.parser.error("prune needs --keep, --older-than or both")
    prog = f"{PROG} {args.command}"
    try:
        status: int = args.run(args)
    except UserError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep Python's
        # final flush from complaining about the same closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_FAILED
    except OSError as exc:
        print(f"{prog}: {_oneline(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except CorruptCheckpointError as exc:
        print(f"{prog}: damaged checkpoint: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status
