"""What ``doctor`` looks at, read from the system: the thin shell over ``_doctor``.

Reads ``/proc/self/mountinfo``, ``statfs``, ``/sys/dev/block``, the
``tmpfiles.d`` directories and the repository, and measures a short burst of
real saves in a temporary session that is removed afterwards (with the
directories made for it, when the repository did not exist).
"""

from __future__ import annotations

import ctypes
import datetime
import os
import statistics
import time
from collections.abc import Sequence
from typing import Final

from ._bench import missing_directories
from ._doctor import (
    TMPFILES_DIRS,
    DeviceCache,
    DoctorFacts,
    Latency,
    Mount,
    SessionFacts,
    TmpfilesVerdict,
    effective_tmpfiles,
    mount_of,
    parse_mountinfo,
    tmpfiles_verdict,
)
from ._errors import oneline
from ._lock_state import LockState
from ._repository import SessionStorageRepository, describe
from ._session_info import CheckpointStatus
from ._storage import SessionStorage

MOUNTINFO: Final = "/proc/self/mountinfo"
# The burst: enough saves for a median and a rough p99, short on a slow disk.
LATENCY_SAVES: Final = 50
LATENCY_BUDGET: Final = 2.0
LATENCY_MIN_SAVES: Final = 5
LATENCY_SIZE: Final = 4096


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return stream.read()
    except OSError:
        return None


def find_mount(path: str) -> Mount | None:
    """The mount holding ``path`` (which exists), from ``/proc/self/mountinfo``."""
    text = _read_text(MOUNTINFO)
    if text is None:
        return None
    st = os.stat(path)
    return mount_of(
        parse_mountinfo(text),
        os.major(st.st_dev),
        os.minor(st.st_dev),
        os.path.realpath(path),
    )


def device_cache(mount: Mount) -> DeviceCache | None:
    """The write cache of the block device under ``mount``, where sysfs shows it.

    A partition's queue is its disk's. None for filesystems without a block
    device (tmpfs, network) and devices sysfs does not describe.
    """
    base = f"/sys/dev/block/{mount.major}:{mount.minor}"
    for queue in (f"{base}/queue", f"{base}/../queue"):
        mode = _read_text(f"{queue}/write_cache")
        if mode is not None:
            fua = _read_text(f"{queue}/fua")
            name = os.path.basename(os.path.realpath(os.path.dirname(queue)))
            return DeviceCache(
                name,
                mode.strip(),
                None if fua is None else fua.strip() == "1",
            )
    return None


def read_tmpfiles(dirs: Sequence[str] = TMPFILES_DIRS) -> list[dict[str, str]]:
    """The ``*.conf`` files of each tmpfiles.d directory, by name."""
    found = []
    for directory in dirs:
        files = {}
        try:
            names = os.listdir(directory)
        except OSError:
            names = []
        for name in names:
            if name.endswith(".conf"):
                text = _read_text(os.path.join(directory, name))
                # An empty file (or /dev/null link) masks, as systemd does.
                files[name] = text or ""
        found.append(files)
    return found


def _fdatasync_floor(path: str, block: bytes, rounds: int) -> float:
    """The median of overwriting ``path``'s first bytes with ``block`` and
    ``fdatasync``: one flush of the same file, the floor of any durable save."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        timings = []
        for _ in range(rounds):
            begin = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            timings.append(time.perf_counter() - begin)
    finally:
        os.close(fd)
    return statistics.median(timings)


def measure_latency(repository: str) -> Latency:
    """Durable saves in a new session of ``repository``, removed afterwards.

    The repository (and its missing parents) is made for it and removed again
    when it did not exist.
    """
    missing = missing_directories(repository)
    payload = os.urandom(LATENCY_SIZE)
    session = SessionStorage.create(repository, prefix="doctor-")
    try:
        session.save_checkpoint(payload)
        timings: list[float] = []
        deadline = time.perf_counter() + LATENCY_BUDGET
        while len(timings) < LATENCY_SAVES and (
            len(timings) < LATENCY_MIN_SAVES or time.perf_counter() < deadline
        ):
            begin = time.perf_counter()
            session.save_checkpoint(payload)
            timings.append(time.perf_counter() - begin)
        floor = _fdatasync_floor(session.session_file, payload, LATENCY_MIN_SAVES * 2)
    finally:
        session.remove()
        for path in missing:
            os.rmdir(path)
    ordered = sorted(timings)
    p99 = ordered[min(len(ordered) - 1, (len(ordered) * 99) // 100)]
    return Latency(len(ordered), LATENCY_SIZE, statistics.median(ordered), p99, floor)


def session_facts(repo: SessionStorageRepository) -> SessionFacts:
    """Stale locks, tombstones, damaged and unreadable sessions, sizes and ages.

    Each session is described as ``show`` describes it: the scan's account,
    with a slotted checkpoint's newest record verified, so a damaged record is
    found and a FIFO or an unreadable file is reported without being read.
    """
    infos, leftovers = repo._scan()
    checked = []
    for info in infos:
        try:
            checked.append(describe(info.location))
        except FileNotFoundError:
            continue
    damaged = [i.id for i in checked if i.checkpoint is CheckpointStatus.DAMAGED]
    unreadable = [i.id for i in checked if i.checkpoint is CheckpointStatus.UNREADABLE]
    tombstones = [os.path.basename(t.location) for t in leftovers]
    sizes = [i.checkpoint_size for i in infos if i.checkpoint_size is not None]
    return SessionFacts(
        count=len(infos),
        largest_checkpoint=max(sizes, default=None),
        stale=tuple(i.id for i in infos if i.lock is LockState.STALE),
        tombstones=tuple(tombstones),
        damaged=tuple(damaged),
        unreadable=tuple(unreadable),
        modified=tuple((i.id, i.modified) for i in infos),
    )


def statfs_type(path: str) -> int | None:
    """``statfs(2)``'s f_type of ``path``: the kernel's own name of its filesystem.

    Read through libc (Python's os has statvfs only, which lacks it); None
    where that is not possible.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        statfs = libc.statfs
    except (OSError, AttributeError):
        return None
    # struct statfs starts with f_type, a C long on Linux; 512 bytes hold the rest.
    buffer = ctypes.create_string_buffer(512)
    if statfs(os.fsencode(path), buffer) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buffer).value & 0xFFFFFFFF


def _statfs_free(path: str) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def gather(
    location: str,
    *,
    measure: bool = True,
    tmpfiles_dirs: Sequence[str] = TMPFILES_DIRS,
) -> DoctorFacts:
    """Every fact ``doctor`` judges about the repository at ``location``."""
    repository = os.path.abspath(location)
    exists = os.path.lexists(repository)
    is_directory = os.path.isdir(repository)
    checked = repository if is_directory else _nearest_existing(repository)
    if exists and not is_directory:
        checked = os.path.dirname(repository)
    mount = find_mount(checked)
    device = None if mount is None else device_cache(mount)
    latency = latency_error = None
    if measure and (is_directory or not exists):
        try:
            latency = measure_latency(repository)
        except OSError as exc:
            latency_error = oneline(exc)
    sessions = scan_error = None
    if is_directory:
        try:
            sessions = session_facts(SessionStorageRepository(repository))
        except OSError as exc:
            scan_error = oneline(exc)
    verdict: TmpfilesVerdict | None = tmpfiles_verdict(
        effective_tmpfiles(read_tmpfiles(tmpfiles_dirs), tmpfiles_dirs),
        os.path.realpath(repository) if exists else repository,
    )
    return DoctorFacts(
        repository=repository,
        exists=exists,
        is_directory=is_directory,
        checked_path=checked,
        mount=mount,
        device=device,
        free_bytes=_statfs_free(checked),
        latency=latency,
        latency_error=latency_error,
        sessions=sessions,
        scan_error=scan_error,
        tmpfiles=verdict,
        fs_magic=statfs_type(checked),
    )


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
