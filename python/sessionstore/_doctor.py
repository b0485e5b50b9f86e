"""Whether a repository can keep the library's promises: the pure half of ``doctor``.

Everything here decides from facts already gathered (the text of
``/proc/self/mountinfo`` and of ``tmpfiles.d`` files, measured latencies, a
scan): which filesystem holds the repository, which ``systemd-tmpfiles`` rule
ages it, and which findings follow. ``_doctor_facts`` does the reading.
"""

from __future__ import annotations

import datetime
import enum
import fnmatch
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs

from ._units import format_seconds, format_size

# Filesystems whose contents live in memory only.
VOLATILE: Final = frozenset({"tmpfs", "ramfs"})
# Filesystems where flock, rename or fsync mean something else than on a local
# disk, and which this library's tests do not cover.
UNTESTED_PREFIXES: Final = ("nfs", "cifs", "smb", "fuse", "overlay", "9p", "ceph")
UNTESTED: Final = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "overlay", "9p", "ceph", "virtiofs"}
)

# statfs(2) f_type values (linux/magic.h) of the filesystems judged here.
FS_MAGIC: Final = {
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb3",
    0x65735546: "fuse",
    0x794C7630: "overlay",
    0x01021997: "9p",
    0x00C36400: "ceph",
    0x6E667364: "virtiofs",
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x2FC12FC1: "zfs",
    0xF2F52010: "f2fs",
}

# systemd-tmpfiles' configuration directories, highest precedence first: a file
# in an earlier one replaces a file of the same name in a later one.
TMPFILES_DIRS: Final = (
    "/etc/tmpfiles.d",
    "/run/tmpfiles.d",
    "/usr/local/lib/tmpfiles.d",
    "/usr/lib/tmpfiles.d",
)
# Line types whose age field makes systemd-tmpfiles --clean delete old contents.
AGING_TYPES: Final = frozenset("dDevqQC")
# Line types that keep a path (and, for ``x``, what is below it) from cleaning.
EXCLUDING_TYPES: Final = frozenset("xX")

# systemd's time units (systemd.time(7)), in seconds.
_TIME_UNITS: Final = {
    "us": 1e-6,
    "usec": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "w": 604800.0,
    "week": 604800.0,
    "weeks": 604800.0,
    "M": 2629800.0,
    "month": 2629800.0,
    "months": 2629800.0,
    "y": 31557600.0,
    "year": 31557600.0,
    "years": 31557600.0,
}
_TIME_PART: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Zµ]*)")
# The age field may start with the timestamps it looks at ("cmA:"), then "~".
_AGE_BY: Final = re.compile(r"[abcmABCM]+:")


@attrs.frozen
class Mount:
    """One line of ``/proc/self/mountinfo``: what is mounted where, and how."""

    major: int
    minor: int
    mount_point: str
    fs_type: str
    source: str
    options: frozenset[str]
    """per-mount options and the filesystem's own (super) options together"""

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts in the text of ``/proc/self/mountinfo``; bad lines left out."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            dash = fields.index("-", 6)
            major, minor = (int(part) for part in fields[2].split(":"))
            fs_type, source = fields[dash + 1], _unescape(fields[dash + 2])
            options = fields[5].split(",") + fields[dash + 3].split(",")
        except (ValueError, IndexError):
            continue
        mounts.append(
            Mount(
                major, minor, _unescape(fields[4]), fs_type, source, frozenset(options)
            )
        )
    return mounts


def _under(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory + "/")


def mount_of(
    mounts: Sequence[Mount], major: int, minor: int, path: str
) -> Mount | None:
    """The mount ``path`` (absolute, symlinks resolved) lives on.

    The last-mounted of the longest mount points above ``path``, preferring one
    of the device ``stat`` reports (btrfs subvolumes report another device
    number than mountinfo, so the device alone is not required).
    """
    above = [(i, m) for i, m in enumerate(mounts) if _under(path, m.mount_point)]
    same_device = [(i, m) for i, m in above if (m.major, m.minor) == (major, minor)]
    chosen = same_device or above
    if not chosen:
        return None
    return max(chosen, key=lambda im: (len(im[1].mount_point), im[0]))[1]


def parse_time_span(text: str) -> datetime.timedelta | None:
    """A systemd time span (``30d``, ``1h30min``, ``2w 1d``, ``10``); None if bad."""
    total = 0.0
    position = 0
    text = text.strip()
    if not text:
        return None
    while position < len(text):
        match = _TIME_PART.match(text, position)
        if not match or match.end() == position:
            return None
        unit = _TIME_UNITS.get(match[2])
        if unit is None:
            return None
        total += float(match[1]) * unit
        position = match.end()
        while position < len(text) and text[position].isspace():
            position += 1
    return datetime.timedelta(seconds=total)


@attrs.frozen
class TmpfilesAge:
    """The age field of a tmpfiles.d line: what is older than ``age`` goes.

    ``skip_first_level`` (a leading ``~``) spares the entries directly inside
    the line's path, not what is below them.
    """

    age: datetime.timedelta
    skip_first_level: bool = False


def parse_tmpfiles_age(field: str) -> TmpfilesAge | None:
    """The age field of a tmpfiles.d line; None for ``-`` or one that does not parse."""
    if field == "-":
        return None
    match = _AGE_BY.match(field)
    rest = field[match.end() :] if match else field
    skip = rest.startswith("~")
    span = parse_time_span(rest[1:] if skip else rest)
    return None if span is None else TmpfilesAge(span, skip)


@attrs.frozen
class TmpfilesRule:
    """One line of a tmpfiles.d file, as far as cleaning by age goes."""

    type: str
    path: str
    age: TmpfilesAge | None
    origin: str
    """``file:line`` the rule comes from"""


# Specifiers systemd-tmpfiles expands the same way for every system instance.
_SPECIFIERS: Final = {"%%": "%", "%T": "/tmp", "%V": "/var/tmp", "%t": "/run"}


def _expand(path: str) -> str | None:
    out = re.sub(r"%.", lambda m: _SPECIFIERS.get(m[0], "\0"), path)
    return None if "\0" in out else out


def parse_tmpfiles(text: str, name: str) -> list[TmpfilesRule]:
    """The rules of one tmpfiles.d file, in order; comments and bad lines left out.

    Columns: type (with modifiers such as ``!`` or ``-``), path, mode, user,
    group, age, argument; a missing or ``-`` age does not clean. A path with a
    specifier this code cannot expand for the system instance is left out.
    """
    rules = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            # Quotes and backslash escapes, as systemd-tmpfiles reads fields.
            fields = shlex.split(stripped)
        except ValueError:
            continue
        if len(fields) < 2 or not fields[0]:
            continue
        kind = fields[0][0]
        path = _expand(fields[1])
        if path is None or not path.startswith("/"):
            continue
        age = parse_tmpfiles_age(fields[5]) if len(fields) > 5 else None
        path = os.path.normpath(path)
        rules.append(TmpfilesRule(kind, path, age, f"{name}:{number}"))
    return rules


def effective_tmpfiles(
    files_by_dir: Sequence[Mapping[str, str]], dir_names: Sequence[str]
) -> list[TmpfilesRule]:
    """The rules systemd-tmpfiles applies, from the files of each directory.

    ``files_by_dir`` holds, per directory of ``dir_names`` (highest precedence
    first), the text of each ``*.conf`` by file name. A name in an earlier
    directory masks the same name in later ones; files are read in name order
    whatever their directory; and of two lines for the same path only the
    first counts (systemd-tmpfiles warns about and ignores the rest).
    """
    chosen: dict[str, tuple[str, str]] = {}
    for directory, files in zip(dir_names, files_by_dir, strict=True):
        for name, text in files.items():
            if name.endswith(".conf") and name not in chosen:
                chosen[name] = (os.path.join(directory, name), text)
    rules: list[TmpfilesRule] = []
    seen: set[str] = set()
    for name in sorted(chosen):
        origin, text = chosen[name]
        for rule in parse_tmpfiles(text, origin):
            # Exclusions and globs do not compete with path lines.
            if rule.type in EXCLUDING_TYPES or _is_glob(rule.path):
                rules.append(rule)
            elif rule.path not in seen:
                seen.add(rule.path)
                rules.append(rule)
    return rules


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _matches(rule: TmpfilesRule, path: str) -> bool:
    return (
        fnmatch.fnmatchcase(path, rule.path)
        if _is_glob(rule.path)
        else (path == rule.path)
    )


@attrs.frozen
class TmpfilesVerdict:
    """How systemd-tmpfiles --clean treats the sessions in a repository."""

    rule: TmpfilesRule
    """the aging rule whose cleaning reaches the repository's sessions"""
    sessions_depth: int
    """how many levels below the rule's path the session directories sit"""

    @property
    def age(self) -> datetime.timedelta:
        assert self.rule.age is not None
        return self.rule.age.age

    @property
    def spares_sessions(self) -> bool:
        """A ``~`` age on the repository itself spares the session directories
        (but not the checkpoints inside them)."""
        assert self.rule.age is not None
        return self.rule.age.skip_first_level and self.sessions_depth == 1


def tmpfiles_verdict(
    rules: Sequence[TmpfilesRule], repository: str
) -> TmpfilesVerdict | None:
    """The aging rule that cleans ``repository``'s sessions, or None.

    Cleaning walks down from the path of an aging line, skipping any path
    that has a line of its own (it is cleaned by that line, or not at all) or
    that an ``x`` line excludes (``X`` excludes the path but not its
    contents). So the line that governs a session directory is that of its
    nearest configured ancestor.
    """
    repository = os.path.normpath(repository)
    path = repository
    depth = 1  # sessions are directly inside the repository
    while True:
        for rule in rules:
            if rule.type == "x" and _matches(rule, path):
                return None
        own = [
            r
            for r in rules
            if r.type not in EXCLUDING_TYPES and not _is_glob(r.path) and r.path == path
        ]
        if own:
            rule = own[0]
            if rule.type in AGING_TYPES and rule.age is not None:
                return TmpfilesVerdict(rule, depth)
            return None
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
        depth += 1


class Severity(enum.Enum):
    """How much a finding matters."""

    OK = "ok"
    """checked, and as it should be"""
    NOTE = "note"
    """worth knowing; nothing to do"""
    ATTENTION = "attention"
    """a promise is at risk or something is left to clean up: act"""


@attrs.frozen
class Finding:
    """One thing ``doctor`` found: a stable code, a short reason, what to do."""

    code: str
    severity: Severity
    summary: str
    action: str | None = None


@attrs.frozen
class Latency:
    """Durable save latency measured on the repository's filesystem (seconds)."""

    saves: int
    size: int
    median: float
    p99: float
    flush_median: float
    """one write and ``fdatasync`` of the same file: the floor of any durable save"""


@attrs.frozen
class SessionFacts:
    """What a scan of the repository found, reduced to what doctor judges."""

    count: int
    largest_checkpoint: int | None
    stale: tuple[str, ...]
    tombstones: tuple[str, ...]
    damaged: tuple[str, ...]
    unreadable: tuple[str, ...]
    modified: tuple[tuple[str, datetime.datetime], ...]
    """every session's id and when it last changed"""


@attrs.frozen
class DeviceCache:
    """The write cache of the block device under the filesystem."""

    device: str
    write_cache: str
    """``write back`` (a volatile cache that flushes must empty) or ``write through``"""
    fua: bool | None


@attrs.frozen
class DoctorFacts:
    """Everything ``doctor`` judges, as gathered."""

    repository: str
    exists: bool
    is_directory: bool
    checked_path: str
    """the repository, or its nearest existing ancestor when it does not exist"""
    mount: Mount | None
    device: DeviceCache | None
    free_bytes: int | None
    latency: Latency | None
    latency_error: str | None
    sessions: SessionFacts | None
    scan_error: str | None
    tmpfiles: TmpfilesVerdict | None
    fs_magic: int | None = None
    """``statfs`` f_type of the checked directory, when it could be read"""


def _is_untested(fs_type: str) -> bool:
    return fs_type in UNTESTED or fs_type.startswith(UNTESTED_PREFIXES)


def _listing(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def filesystem_findings(mount: Mount | None, magic: int | None) -> list[Finding]:
    """What the filesystem and its mount options mean for the promises.

    The kind of filesystem is what ``statfs`` says of the repository's own
    directory where it names a known one (``FS_MAGIC``), else the type
    mountinfo gives its mount; the mount's options are mountinfo's.
    """
    kind = FS_MAGIC.get(magic) if magic is not None else None
    if mount is None and kind is None:
        return [
            Finding(
                "filesystem-unknown",
                Severity.NOTE,
                "the filesystem is neither in /proc/self/mountinfo nor known by "
                "its statfs type",
            )
        ]
    found = []
    if mount is None:
        assert kind is not None
        where = kind
        kind_of_mount = kind
    else:
        where = f"{mount.fs_type} at {mount.mount_point}"
        kind_of_mount = kind or mount.fs_type
    if kind_of_mount in VOLATILE:
        found.append(
            Finding(
                "volatile-filesystem",
                Severity.ATTENTION,
                f"{where} keeps everything in memory: no checkpoint survives "
                "a reboot or power cut",
                "put the repository on a disk-backed filesystem "
                "(--repo, or PLAINBOX_SESSION_REPOSITORY)",
            )
        )
    elif _is_untested(kind_of_mount):
        found.append(
            Finding(
                "untested-filesystem",
                Severity.ATTENTION,
                f"{where}: flock and the durability of fsync and rename there "
                "are the server's or the driver's, and untested by this library",
                "put the repository on a local disk filesystem (ext4, xfs, btrfs)",
            )
        )
    else:
        source = "" if mount is None else f", {mount.source}"
        found.append(Finding("filesystem", Severity.OK, f"{where}{source}"))
    if mount is None:
        return found
    if mount.read_only:
        found.append(
            Finding(
                "read-only",
                Severity.ATTENTION,
                f"{mount.mount_point} is mounted read-only: every save fails",
                "remount it read-write or choose another repository",
            )
        )
    options = mount.options
    if options & {"nobarrier", "barrier=0"}:
        found.append(
            Finding(
                "no-barriers",
                Severity.ATTENTION,
                "mounted with nobarrier: fsync does not flush the disk's "
                "write cache, so a power cut can lose an acknowledged checkpoint",
                "remount without nobarrier (or with barrier=1)",
            )
        )
    if "sync" in options or "dirsync" in options:
        found.append(
            Finding(
                "sync-mount",
                Severity.NOTE,
                "mounted sync: every write is synchronous, so Durability.NONE "
                "saves cost as much as durable ones",
            )
        )
    if "data=journal" in options:
        found.append(
            Finding(
                "data-journal",
                Severity.NOTE,
                "data=journal: checkpoint bytes are written twice "
                "(journal, then place); saves of large checkpoints cost more",
            )
        )
    return found


def decide(facts: DoctorFacts, now: datetime.datetime) -> list[Finding]:
    """Every finding from ``facts``, in a fixed order."""
    found: list[Finding] = []
    if not facts.exists:
        found.append(
            Finding(
                "repository-missing",
                Severity.NOTE,
                f"{facts.repository} does not exist yet (the first session "
                f"creates it); checked {facts.checked_path}, where it will be",
            )
        )
    elif not facts.is_directory:
        found.append(
            Finding(
                "not-a-directory",
                Severity.ATTENTION,
                f"session repository is not a directory: {facts.repository}",
                "remove it or choose another repository",
            )
        )
    found += filesystem_findings(facts.mount, facts.fs_magic)
    if facts.device is not None:
        cache = facts.device
        fua = {True: ", FUA", False: ", no FUA", None: ""}[cache.fua]
        volatile = cache.write_cache == "write back"
        found.append(
            Finding(
                "write-cache",
                Severity.NOTE if volatile else Severity.OK,
                f"{cache.device}: {cache.write_cache} cache{fua}"
                + (
                    " (volatile: durable only because fsync has the disk "
                    "flush it, and only if the disk honours flushes)"
                    if volatile
                    else ""
                ),
            )
        )
    if facts.latency is not None:
        lat = facts.latency
        found.append(
            Finding(
                "save-latency",
                Severity.OK,
                f"durable save of {format_size(lat.size)}: median "
                f"{format_seconds(lat.median)}, p99 {format_seconds(lat.p99)} over "
                f"{lat.saves} saves; one flush of the same file: "
                f"{format_seconds(lat.flush_median)}",
            )
        )
    elif facts.latency_error is not None:
        found.append(
            Finding(
                "save-failed",
                Severity.ATTENTION,
                f"a test save failed: {facts.latency_error}",
                "make the repository writable by this user, or choose another",
            )
        )
    found += _space_findings(facts)
    if facts.scan_error is not None:
        found.append(
            Finding(
                "repository-unreadable",
                Severity.ATTENTION,
                f"the sessions could not be listed: {facts.scan_error}",
                "give this user read access to the repository",
            )
        )
    if facts.sessions is not None:
        found += session_findings(facts.sessions)
        if facts.tmpfiles is not None:
            found += tmpfiles_findings(facts.tmpfiles, facts.sessions, now)
    elif facts.tmpfiles is not None:
        found += tmpfiles_findings(
            facts.tmpfiles, SessionFacts(0, None, (), (), (), (), ()), now
        )
    return found


def _space_findings(facts: DoctorFacts) -> list[Finding]:
    if facts.free_bytes is None:
        return []
    largest = facts.sessions.largest_checkpoint if facts.sessions else None
    free = format_size(facts.free_bytes)
    if largest is not None and facts.free_bytes < largest:
        return [
            Finding(
                "low-space",
                Severity.ATTENTION,
                f"{free} free, less than the largest checkpoint "
                f"({format_size(largest)}): its next save needs room for one more copy",
                "free space, or prune: sessionstore prune --max-size SIZE",
            )
        ]
    if facts.free_bytes == 0:
        return [
            Finding(
                "no-space",
                Severity.ATTENTION,
                "the filesystem is full: every save fails",
                "free space, or prune: sessionstore prune --max-size SIZE",
            )
        ]
    against = "" if largest is None else f", largest checkpoint {format_size(largest)}"
    return [Finding("free-space", Severity.OK, f"{free} free{against}")]


def session_findings(sessions: SessionFacts) -> list[Finding]:
    """Stale locks, tombstones, damaged and unreadable sessions."""
    found = []
    if sessions.stale:
        found.append(
            Finding(
                "stale-locks",
                Severity.ATTENTION,
                f"{len(sessions.stale)} session(s) with a stale lock, left by a "
                f"writer that died: {_listing(sessions.stale)}",
                "sessionstore break-lock ID (each)",
            )
        )
    if sessions.tombstones:
        found.append(
            Finding(
                "tombstones",
                Severity.ATTENTION,
                f"{len(sessions.tombstones)} leftover(s) of removals a crash "
                "interrupted, taking space",
                "sessionstore prune (with any limit) deletes them",
            )
        )
    if sessions.damaged:
        found.append(
            Finding(
                "damaged",
                Severity.ATTENTION,
                f"{len(sessions.damaged)} session(s) whose checkpoint no load "
                "returns (no record passes its checksum): "
                + _listing(sessions.damaged),
                "recover what you need with load_previous(), then remove them",
            )
        )
    if sessions.unreadable:
        found.append(
            Finding(
                "unreadable",
                Severity.ATTENTION,
                f"{len(sessions.unreadable)} session(s) that cannot be read: "
                f"{_listing(sessions.unreadable)}",
                "check their permissions and the filesystem",
            )
        )
    if not found:
        found.append(
            Finding(
                "sessions",
                Severity.OK,
                f"{sessions.count} session(s); no stale lock, leftover or damage",
            )
        )
    return found


def sessions_older_than(
    modified: Iterable[tuple[str, datetime.datetime]],
    age: datetime.timedelta,
    now: datetime.datetime,
) -> list[str]:
    """The ids of the sessions last changed more than ``age`` before ``now``."""
    return [ident for ident, when in modified if now - when > age]


def tmpfiles_findings(
    verdict: TmpfilesVerdict, sessions: SessionFacts, now: datetime.datetime
) -> list[Finding]:
    """What the tmpfiles rule that ages the repository means for its sessions."""
    rule = verdict.rule
    days = verdict.age / datetime.timedelta(days=1)
    age = f"{days:g} days" if days >= 1 else format_seconds(verdict.age.total_seconds())
    what = "the checkpoints inside sessions" if verdict.spares_sessions else "sessions"
    older = sessions_older_than(sessions.modified, verdict.age, now)
    text = (
        f"systemd-tmpfiles --clean deletes {what} unchanged for {age} here "
        f"({rule.type} {rule.path}, {rule.origin})"
    )
    if older:
        return [
            Finding(
                "tmpfiles-age",
                Severity.ATTENTION,
                f"{text}; {len(older)} session(s) are older: {_listing(older)}",
                "finish or save them, or move the repository out of its reach",
            )
        ]
    return [
        Finding(
            "tmpfiles-age",
            Severity.NOTE,
            text,
            "a session left idle longer is deleted by the system",
        )
    ]


def needs_attention(findings: Iterable[Finding]) -> bool:
    """Whether any finding asks for action (``doctor`` then exits 1)."""
    return any(f.severity is Severity.ATTENTION for f in findings)
