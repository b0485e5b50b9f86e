"""Who holds a session's lock: the process, its command line and since when.

Read from the kernel's lock table (``/proc/locks``, the same reader the lock
probe uses) and from ``/proc/PID``: nothing is written anywhere, and a save
does nothing extra for it. The pure half turns what was read into a value; the
shell at the bottom does the reading.

The table records the pid that *took* the lock. A lock lives as long as any
descriptor of the open directory, so that process may since have exited and
its pid been given to an unrelated one, or it may have passed the descriptor
to a child and closed its own. A holder is therefore named only when the
process with that pid has the session directory open, and its start time did
not change while it was being read (a pid reused in between starts later).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping
from typing import Final

import attrs

from ._fallback.posix import read_proc_locks
from ._lock_state import FileKey, parse_lock_owners

# A command line longer than this is cut, with an ellipsis, in messages.
COMMAND_WIDTH: Final = 40
_PROC: Final = "/proc"
# /proc/PID/stat: the fields after the command name's closing parenthesis start
# with field 3 (state); field 22 is the start time in clock ticks after boot.
_START_TICKS_INDEX: Final = 22 - 3


@attrs.frozen
class LockHolder:
    """The process that holds a session's lock.

    ``pid`` as this process's pid namespace numbers it; ``command`` its
    arguments (``argv``), or the kernel's name of the process in brackets
    (``("[name]",)``) when it shows none; ``started`` when the process started
    (UTC, to the second); ``start_ticks`` the same in clock ticks after boot,
    the exact value that tells this process apart from a later one given the
    same pid.
    """

    pid: int
    command: tuple[str, ...]
    started: datetime.datetime
    start_ticks: int
    can_write: bool | None = None
    """Whether the process may write the session (add and replace its files);
    None when its credentials could not be read. A holder that may not is no
    writer of the session: it is another user's process denying the lock to
    the session's writers."""

    def describe(self, now: datetime.datetime | None = None) -> str:
        """``pid 4242 (checkbox-cli run …) since 12:03:41``, see ``describe_holder``."""
        return describe_holder(
            self, now or datetime.datetime.now(datetime.timezone.utc)
        )


@attrs.frozen
class ProcStat:
    """The two facts this module needs from ``/proc/PID/stat``."""

    name: str
    start_ticks: int


def parse_proc_stat(text: str) -> ProcStat | None:
    """The name and start time of a process, from its ``/proc/PID/stat``.

    The name (field 2) is in parentheses and may itself hold spaces and
    parentheses, so the fields after it are found from the *last* ``)``.
    None for text that does not parse.
    """
    opening, closing = text.find("("), text.rfind(")")
    if opening < 0 or closing < opening:
        return None
    rest = text[closing + 1 :].split()
    try:
        return ProcStat(text[opening + 1 : closing], int(rest[_START_TICKS_INDEX]))
    except (IndexError, ValueError):
        return None


def parse_boot_time(text: str) -> int | None:
    """The boot time (seconds since the epoch) from the text of ``/proc/stat``."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "btime":
            try:
                return int(fields[1])
            except ValueError:
                return None
    return None


def process_started(
    boot_time: int, start_ticks: int, ticks_per_second: int
) -> datetime.datetime:
    """When a process started, as an aware UTC datetime, to the second."""
    seconds = boot_time + start_ticks // ticks_per_second
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def parse_cmdline(raw: bytes, name: str) -> tuple[str, ...]:
    """A process's arguments from ``/proc/PID/cmdline``; ``[name]`` when empty.

    Kernel threads and exited (zombie) processes show no arguments. Bytes that
    are not text are kept as surrogate escapes, as ``os.fsdecode`` does.
    """
    args = tuple(os.fsdecode(arg) for arg in raw.rstrip(b"\0").split(b"\0") if arg)
    return args or (f"[{name}]",)


def format_command(command: Iterable[str], width: int = COMMAND_WIDTH) -> str:
    """A command line in one short piece: arguments joined, cut with ``…``."""
    text = " ".join(command)
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


@attrs.frozen
class Credentials:
    """What the kernel checks a process's file accesses against: its
    filesystem user id and its groups (filesystem group id and supplementary
    groups)."""

    uid: int
    groups: frozenset[int]


def parse_credentials(text: str) -> Credentials | None:
    """The credentials in the text of ``/proc/PID/status``; None if absent."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    try:
        # Uid and Gid list the real, effective, saved and filesystem ids.
        uid = int(fields["Uid"][3])
        gid = int(fields["Gid"][3])
        groups = frozenset(int(group) for group in fields.get("Groups", ()))
    except (KeyError, IndexError, ValueError):
        return None
    return Credentials(uid, groups | {gid})


def may_write_directory(
    credentials: Credentials, mode: int, owner: int, group: int
) -> bool:
    """Whether a process may add, replace and remove entries of a directory
    with this mode, owner and group, by its permission bits (write and search)
    as the kernel checks them: root may; otherwise the owner's bits, else the
    group's, else the others'. ACLs and capabilities other than root's are
    not read."""
    if credentials.uid == 0:
        return True
    if credentials.uid == owner:
        bits = mode >> 6
    elif group in credentials.groups:
        bits = mode >> 3
    else:
        bits = mode
    return bits & 0o3 == 0o3


def describe_holder(holder: LockHolder, now: datetime.datetime) -> str:
    """``pid 4242 (checkbox-cli run …) since 12:03:41`` for people.

    The time is UTC, as everywhere on the command line; the date is added when
    the process did not start on ``now``'s day.
    """
    started = holder.started.astimezone(datetime.timezone.utc)
    today = now.astimezone(datetime.timezone.utc).date()
    when = started.strftime(
        "%H:%M:%S UTC" if started.date() == today else "%Y-%m-%d %H:%M:%S UTC"
    )
    return f"pid {holder.pid} ({format_command(holder.command)}) since {when}"


def owner_candidates(
    owners: Mapping[FileKey, frozenset[int]], key: FileKey
) -> tuple[tuple[int, bool], ...]:
    """The pids that may own the lock of ``key``, each with whether it is sure.

    An exact match of device and inode is sure. A match on the inode alone is
    a maybe: the table names btrfs subvolumes under another device number
    than ``stat`` reports, and another filesystem may have the same inode.
    """
    sure = owners.get(key, frozenset())
    maybe = {
        pid
        for other, pids in owners.items()
        if other != key and other.inode == key.inode
        for pid in pids
    }
    return tuple((pid, True) for pid in sorted(sure)) + tuple(
        (pid, False) for pid in sorted(maybe - sure)
    )


# The shell: everything below reads /proc.


def _read(path: str) -> bytes | None:
    """A /proc file's bytes, or None when the process (or the file) is gone."""
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _stat_of(pid: int) -> ProcStat | None:
    raw = _read(f"{_PROC}/{pid}/stat")
    return None if raw is None else parse_proc_stat(raw.decode("utf-8", "replace"))


def _has_open(pid: int, dev: int, ino: int) -> bool | None:
    """Whether process ``pid`` has the file ``dev``/``ino`` open; None: cannot tell.

    ``stat`` through ``/proc/PID/fd/N`` names the open file without opening
    it. Reading another user's descriptors needs privileges this process may
    not have.
    """
    fds = f"{_PROC}/{pid}/fd"
    try:
        names = os.listdir(fds)
    except (FileNotFoundError, ProcessLookupError):
        return False
    except PermissionError:
        return None
    for name in names:
        try:
            st = os.stat(os.path.join(fds, name))
        except OSError:
            # Closed meanwhile, or a descriptor stat cannot follow.
            continue
        if st.st_dev == dev and st.st_ino == ino:
            return True
    return False


def _boot_time() -> int | None:
    raw = _read(f"{_PROC}/stat")
    return None if raw is None else parse_boot_time(raw.decode("ascii", "replace"))


def _holder_if_verified(
    pid: int, sure: bool, st: os.stat_result, boot_time: int
) -> LockHolder | None:
    before = _stat_of(pid)
    if before is None:
        return None
    opened = _has_open(pid, st.st_dev, st.st_ino)
    if opened is False or (opened is None and not sure):
        return None
    raw = _read(f"{_PROC}/{pid}/cmdline")
    status = _read(f"{_PROC}/{pid}/status")
    after = _stat_of(pid)
    if raw is None or after != before:
        return None
    started = process_started(boot_time, before.start_ticks, os.sysconf("SC_CLK_TCK"))
    credentials = (
        None if status is None else parse_credentials(status.decode("utf-8", "replace"))
    )
    can_write = (
        None
        if credentials is None
        else may_write_directory(credentials, st.st_mode, st.st_uid, st.st_gid)
    )
    return LockHolder(
        pid, parse_cmdline(raw, before.name), started, before.start_ticks, can_write
    )


def find_holder(location: str) -> LockHolder | None:
    """The process holding the lock of the session at ``location``, or None.

    None when nobody holds it, when the kernel's table does not show the
    holder to this pid namespace, and when the recorded owner no longer has
    the session open (it exited and its pid went to another process, or the
    lock lives on in a descriptor it passed on). FileNotFoundError naming the
    location for a missing session.
    """
    st = os.stat(location)
    text = read_proc_locks()
    boot_time = _boot_time()
    if text is None or boot_time is None:
        return None
    key = FileKey(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for pid, sure in owner_candidates(parse_lock_owners(text), key):
        holder = _holder_if_verified(pid, sure, st, boot_time)
        if holder is not None:
            return holder
    return None
