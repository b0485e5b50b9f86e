"""Rounds of real power cuts: boot a guest, let it save, cut, check on the host.

A series is one disk image (ext4, xfs or btrfs) and one save path; its rounds
run one after the other on that image, each starting from what the cut before
left. A round boots the guest under ``qemu-system-x86_64 -accel tcg`` with the
image behind a ``VolatileDisk``, reads the guest's acknowledgements from its
serial console, cuts the power (see ``Cut``), drops the disk's unflushed
writes (all, or a random part, see ``Drop``), then mounts the image on the host
and judges what ``load_checkpoint()`` returns (see ``judge()``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import attrs
import guest_saver
from powercut_kit import Kit, KitUnavailable
from volatile_disk import CutReport, Drop, VolatileDisk

import sessionstore
from sessionstore import LockState, SessionStorage, SessionStorageRepository

FILESYSTEMS: Final = ("ext4", "xfs", "btrfs")
BACKENDS: Final = ("native", "python")
HARNESS_DIR: Final = Path(__file__).resolve().parent
# The smallest image each mkfs accepts; sparse, so the size costs no space.
_IMAGE_MIB: Final = {"ext4": 64, "xfs": 300, "btrfs": 128}
_MKFS: Final = {
    "ext4": ("mkfs.ext4", "-q", "-F"),
    "xfs": ("mkfs.xfs", "-q", "-f"),
    "btrfs": ("mkfs.btrfs", "-q", "-f"),
}
# A guest under TCG boots in about 10 s; a loaded machine may take several times that.
BOOT_TIMEOUT: Final = 240.0
# How long a round may save before a cut that waits for the guest gives up.
SAVE_TIMEOUT: Final = 240.0
# A kill lands this long after the guest is ready, at most.
KILL_WINDOW: Final = 6.0


class Cut(enum.Enum):
    """How the power goes off."""

    KILL = "kill"
    """qemu is killed at a random moment while the guest saves"""
    PANIC = "panic"
    """the guest kernel panics right after its k-th acknowledgement"""
    DISK = "disk"
    """the disk stops in the middle of a write burst: at a random write request
    after the k-th acknowledgement"""


class Verdict(enum.Enum):
    OK = "ok"
    LOST = "lost"
    """an acknowledged checkpoint did not survive (an older one, or none, loads)"""
    TORN = "torn"
    """what loads is not one whole checkpoint, or not one that was saved"""
    LOCKED = "locked"
    """the lock is HELD after the cut, or STALE without a leftover session.next"""
    ERROR = "error"
    """the round could not run (the guest failed, or never got ready)"""


@attrs.frozen
class Round:
    fs: str
    path: str
    backend: str
    cut: Cut
    drop: Drop
    seed: int
    lying: bool = False


@attrs.frozen
class Outcome:
    round: Round
    verdict: Verdict
    detail: str
    acked: int
    base: int
    loaded: int | None
    cache: CutReport | None
    seconds: float


def tools_missing() -> str | None:
    """Why rounds cannot run here (a missing tool, not root), or None."""
    if os.geteuid() != 0:
        return f"mounting the disk images needs root (running as uid {os.geteuid()})"
    for tool in (
        "qemu-system-x86_64",
        "mount",
        "umount",
        *(m[0] for m in _MKFS.values()),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/powercut installs it)"
    return None


def shared_trees(package_root: Path) -> list[Path]:
    """The host trees the guest needs, read-only at the same paths.

    ``/usr`` (the C library and the loader: the top-level ``lib*`` are links
    into it on a merged-``/usr`` host), the interpreter's installation and its
    environment (a venv's ``sys.prefix`` differs from ``sys.base_prefix``), the
    package itself (an editable install points outside both) and this harness.
    A tree inside another is shared once, with the outer one.
    """
    wanted = {
        Path("/usr"),
        Path(sys.base_prefix).resolve(),
        Path(sys.prefix).resolve(),
        package_root.resolve(),
        HARNESS_DIR,
    }
    for name in ("lib", "lib64"):
        top = Path("/") / name
        if top.exists() and not (
            top.is_symlink() and os.readlink(top).startswith("usr")
        ):
            raise KitUnavailable(f"{top} is not a link into /usr (not a merged /usr)")
    ordered = sorted(wanted, key=lambda p: len(p.parts))
    trees: list[Path] = []
    for tree in ordered:
        if not any(tree.is_relative_to(outer) for outer in trees):
            trees.append(tree)
    for tree in trees:
        if " " in str(tree) or '"' in str(tree):
            raise KitUnavailable(
                f"{tree}: a path with spaces cannot go on the kernel command line"
            )
    return trees


def package_root() -> Path:
    """The directory the ``sessionstore`` package is imported from."""
    return Path(sessionstore.__file__).resolve().parent.parent


def qemu_command(
    kit: Kit, socket_path: Path, rnd: Round, panic_after: int
) -> list[str]:
    trees = shared_trees(package_root())
    shares = " ".join(f"s{i}={tree}" for i, tree in enumerate(trees))
    append = " ".join(
        [
            "console=ttyS0",
            "quiet",
            "loglevel=1",
            # Wait after a panic: the host cuts the power when it sees it.
            "panic=0",
            # Under emulation on a busy host the boot-time check of the timer
            # can miss its ticks and panic ("IO-APIC + timer doesn't work").
            "no_timer_check",
            # No ACPI: its tables cost a parse, and its PCI interrupt links
            # an eighth of a second per virtio device under emulation.
            "acpi=off",
            f"PC_FS={rnd.fs}",
            f"PC_PATH={guest_saver.LYING_DISK if rnd.lying else rnd.path}",
            f"PC_PANIC_AFTER={panic_after}",
            f"SESSIONSTORE_BACKEND={rnd.backend}",
            f"PC_PYTHON={sys.executable}",
            f"PC_SAVER={HARNESS_DIR / 'guest_saver.py'}",
            f'PC_SHARES="{shares}"',
        ]
    )
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "512",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        str(kit.kernel),
        "-initrd",
        str(kit.initramfs[rnd.fs]),
        "-append",
        append,
        "-drive",
        f"file=nbd+unix:///?socket={socket_path},format=raw,if=virtio,cache=writeback",
    ]
    for i, tree in enumerate(trees):
        argv += [
            "-fsdev",
            f"local,id=s{i},path={tree},security_model=none,readonly=on",
            "-device",
            f"virtio-9p-pci,fsdev=s{i},mount_tag=s{i}",
        ]
    return argv


def make_image(fs: str, directory: Path) -> Path:
    """A fresh ``fs`` image holding one empty session under ``repo``."""
    image = directory / f"{fs}.img"
    with open(image, "wb") as sparse:
        sparse.truncate(_IMAGE_MIB[fs] << 20)
    _run(*_MKFS[fs], str(image))
    with mounted(image, fs) as root:
        SessionStorage.create(root / "repo", prefix="powercut-")
    return image


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


@contextlib.contextmanager
def mounted(image: Path, fs: str) -> Iterator[Path]:
    """``image`` mounted (through a loop device) for the block's duration."""
    root = Path(tempfile.mkdtemp(prefix=f"powercut-{fs}-"))
    try:
        _run("mount", "-t", fs, "-o", "loop", str(image), str(root))
        try:
            yield root
        finally:
            _run("umount", str(root))
    finally:
        root.rmdir()


class Console:
    """The guest's serial console, read line by line on a thread."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self.acks: dict[int, str] = {}
        self.started = 0
        self.base: int | None = None
        self.error: str | None = None
        self.panicked = False
        self.ended = False
        self.changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            if not raw.endswith(b"\n"):
                # Cut off by the kill: a truncated acknowledgement would
                # misreport its digest, and one unseen only lowers the bar.
                break
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            words = line.split()
            with self.changed:
                self.lines.append(line)
                if "Kernel panic" in line:
                    self.panicked = True
                elif words[:2] == ["PC", "READY"]:
                    self.base = int(words[2])
                elif words[:2] == ["PC", "S"]:
                    self.started = max(self.started, int(words[2]))
                elif words[:2] == ["PC", "A"]:
                    self.acks[int(words[2])] = words[3]
                elif words[:2] == ["PC", "ERR"]:
                    self.error = line
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def wait(self, until: Callable[[], bool], timeout: float) -> bool:
        """Whether ``until()`` came true before the guest failed or stopped,
        and within ``timeout`` seconds."""
        with self.changed:
            self.changed.wait_for(
                lambda: (
                    until() or self.error is not None or self.ended or self.panicked
                ),
                timeout,
            )
            return until()

    def join(self) -> None:
        self._thread.join(timeout=30)

    def tail(self, count: int = 25) -> str:
        return "\n".join(self.lines[-count:])


def run_round(kit: Kit, image: Path, rnd: Round, workdir: Path, base: int) -> Outcome:
    """One boot, saves, a cut and the check; ``base``: what loaded before it."""
    rng = random.Random(rnd.seed)
    began = time.monotonic()
    target_ack = rng.randint(1, 6)
    panic_after = target_ack if rnd.cut is Cut.PANIC else 0
    socket_path = workdir / "disk.sock"
    disk = VolatileDisk(image, socket_path, lying=rnd.lying)
    process = None
    console = None
    report = None
    problem: str | None = None
    try:
        process = subprocess.Popen(
            qemu_command(kit, socket_path, rnd, panic_after),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        console = Console(process)
        if not console.wait(lambda: console.base is not None, BOOT_TIMEOUT):
            problem = "the guest did not get ready"
        elif rnd.cut is Cut.KILL:
            console.wait(lambda: False, rng.uniform(0, KILL_WINDOW))
        elif rnd.cut is Cut.PANIC:
            if not console.wait(lambda: console.panicked, SAVE_TIMEOUT):
                problem = "the guest did not panic"
            elif len(console.acks) < target_ack:
                problem = f"the guest panicked before acknowledgement {target_ack}"
        elif not console.wait(lambda: len(console.acks) >= target_ack, SAVE_TIMEOUT):
            problem = f"the guest made fewer than {target_ack} saves"
        else:
            disk.cut_after_writes(rng.randint(1, 12))
            if not disk.cut_reached.wait(SAVE_TIMEOUT):
                problem = "the disk saw no more writes"
        # The power goes off: the disk first, so nothing the guest does from
        # here on reaches it, then the machine.
        disk.freeze()
        process.kill()
        process.wait()
        console.join()
        report = disk.power_cut(rnd.drop, rng)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        disk.close()
    if disk.error is not None:
        problem = f"the disk failed: {disk.error!r}"
    if console.error is not None:
        problem = console.error
    elif console.panicked and (rnd.cut is not Cut.PANIC or console.base is None):
        problem = "the guest kernel panicked"
    guest_base = console.base if console.base is not None else base
    acked = max(console.acks, default=guest_base)
    if problem is not None:
        return Outcome(
            rnd,
            Verdict.ERROR,
            f"{problem}\n{console.tail()}",
            acked,
            guest_base,
            None,
            report,
            time.monotonic() - began,
        )
    verdict, detail, loaded = judge(image, rnd.fs, guest_base, console)
    if verdict is not Verdict.OK:
        detail += f"\n{console.tail()}"
    return Outcome(
        rnd,
        verdict,
        detail,
        acked,
        guest_base,
        loaded,
        report,
        time.monotonic() - began,
    )


def judge(
    image: Path, fs: str, base: int, console: Console
) -> tuple[Verdict, str, int | None]:
    """What survived, judged against what the guest acknowledged and started.

    The last acknowledged checkpoint (or, with none, the one loaded at boot)
    or one started after it must load, whole; nothing older, nothing never
    saved; the lock not HELD, and STALE exactly when ``session.next`` is left.
    """
    floor = max(console.acks, default=base)
    ceiling = max(console.started, floor)
    try:
        with mounted(image, fs) as root:
            storages = SessionStorageRepository(str(root / "repo")).get_storage_list()
            if len(storages) != 1:
                return Verdict.LOST, f"{len(storages)} sessions in the repository", None
            storage = storages[0]
            data = storage.load_checkpoint()
            lock = storage.lock_state()
            leftover = os.path.exists(storage.paths.next)
    except (OSError, RuntimeError) as exc:
        return Verdict.LOST, f"the session cannot be read: {exc}", None
    except ValueError as exc:
        return Verdict.TORN, f"load_checkpoint() failed: {exc!r}", None
    try:
        seq, digest = guest_saver.parse(data)
    except guest_saver.NotACheckpoint as exc:
        return Verdict.TORN, f"not a whole checkpoint: {exc}", None
    if seq < floor:
        return Verdict.LOST, f"checkpoint {seq} loads; {floor} was acknowledged", seq
    if seq > ceiling:
        return (
            Verdict.TORN,
            f"checkpoint {seq} loads; none after {ceiling} was started",
            seq,
        )
    if seq in console.acks and console.acks[seq] != digest:
        return Verdict.TORN, f"checkpoint {seq} is not the one acknowledged", seq
    if lock is LockState.HELD or (lock is LockState.STALE) != leftover:
        return Verdict.LOCKED, f"lock {lock.name}, session.next left: {leftover}", seq
    return Verdict.OK, f"checkpoint {seq} loads (acknowledged {floor})", seq


@attrs.frozen
class Series:
    """Rounds on one image: one filesystem, one save path, backends in turn."""

    fs: str
    path: str
    rounds: int
    seed: int
    cuts: tuple[Cut, ...] = tuple(Cut)
    drops: tuple[Drop, ...] = tuple(Drop)
    lying: bool = False
    # Where in the turns of backends and cuts the first round starts, so
    # that series do not all begin alike.
    offset: int = 0

    def plan(self) -> list[Round]:
        rng = random.Random(self.seed)
        return [
            Round(
                self.fs,
                self.path,
                BACKENDS[(i + self.offset) % len(BACKENDS)],
                self.cuts[(i + self.offset) % len(self.cuts)],
                rng.choice(self.drops),
                rng.getrandbits(64),
                self.lying,
            )
            for i in range(self.rounds)
        ]


@attrs.define
class _Running:
    """A series under way: its image and what loaded after its last round."""

    series: Series
    image: Path
    workdir: Path
    rounds: list[Round]
    base: int = 0
    stopped: bool = False


def run_all(
    kit: Kit,
    series: list[Series],
    workdir: Path,
    jobs: int,
    results: Path,
    label: str,
) -> list[Outcome]:
    """Every series, ``jobs`` guests at a time, round 1 of each, then round 2...

    Taking the series in waves spreads a run cut short over every filesystem
    and path. Each round is appended to ``results`` as it ends. A series stops
    at its first round that is not OK: the next would start from a state no
    correct run reaches.
    """
    lock = threading.Lock()
    outcomes: list[Outcome] = []
    running = []
    for i, one in enumerate(series):
        directory = workdir / f"series-{i}"
        directory.mkdir(parents=True)
        running.append(
            _Running(one, make_image(one.fs, directory), directory, one.plan())
        )

    def play(state: _Running, index: int) -> None:
        outcome = run_round(
            kit, state.image, state.rounds[index], state.workdir, state.base
        )
        line = json.dumps(outcome_record(outcome, label))
        with lock:
            outcomes.append(outcome)
            with open(results, "a", encoding="utf-8") as out:
                out.write(line + "\n")
        if outcome.verdict is Verdict.OK:
            state.base = outcome.loaded or 0
        else:
            state.stopped = True

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for index in range(max((len(s.rounds) for s in running), default=0)):
                wave = [
                    pool.submit(play, state, index)
                    for state in running
                    if not state.stopped and index < len(state.rounds)
                ]
                for future in wave:
                    future.result()
    finally:
        for state in running:
            state.image.unlink()
    return outcomes


def outcome_record(outcome: Outcome, label: str) -> dict[str, object]:
    """One round as a JSON object, for the results file."""
    rnd = outcome.round
    return {
        "label": label,
        "fs": rnd.fs,
        "path": guest_saver.LYING_DISK if rnd.lying else rnd.path,
        "backend": rnd.backend,
        "cut": rnd.cut.value,
        "drop": rnd.drop.value,
        "verdict": outcome.verdict.value,
        "acked": outcome.acked,
        "base": outcome.base,
        "loaded": outcome.loaded,
        "unflushed_blocks": outcome.cache.unflushed_blocks if outcome.cache else None,
        "landed_blocks": outcome.cache.landed_blocks if outcome.cache else None,
        "seconds": round(outcome.seconds, 2),
        "detail": outcome.detail.splitlines()[0] if outcome.detail else "",
    }
