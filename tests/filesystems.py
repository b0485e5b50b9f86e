"""Real filesystems for fault tests: a small tmpfs and ext4, xfs, btrfs on loop devices.

Mounting needs root, the kernel's support for the filesystem and, for the loop
kinds, ``losetup`` and the filesystem's ``mkfs``. ``unsupported()`` says which of
these is missing so a test can skip with that reason; ``mounted()`` always
unmounts and detaches what it set up, also when the test fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs
import pytest

TMPFS: Final = "tmpfs"
LOOP_KINDS: Final = ("ext4", "xfs", "btrfs")
KINDS: Final = (TMPFS, *LOOP_KINDS)
# Where the test's temporary directory already is: no mount, no root needed.
DEFAULT: Final = "default"
# A btrfs subvolume, whose inodes stat() reports under another device number
# than the kernel's lock table does.
BTRFS_SUBVOLUME: Final = "btrfs-subvolume"
# Filesystems that write every overwrite to new blocks: there a full disk
# refuses even an in-place save.
COPY_ON_WRITE: Final = frozenset({"btrfs", BTRFS_SUBVOLUME})

MiB: Final = 1024 * 1024

# The smallest image each mkfs accepts (xfs refuses less than 300 MiB, btrfs less
# than 114 MiB); the images are sparse, so their size costs no disk space.
_IMAGE_MIB: Final = {"ext4": 64, "xfs": 300, "btrfs": 128}
_MKFS: Final = {
    "ext4": ("mkfs.ext4", "-q", "-F"),
    "xfs": ("mkfs.xfs", "-q", "-f"),
    "btrfs": ("mkfs.btrfs", "-q", "-f"),
}
# Room for a few sessions of a few MiB; fill() makes it full when a test needs.
TMPFS_SIZE: Final = 16 * MiB


@attrs.frozen
class Mount:
    """A filesystem mounted for one test module; ``root`` is where it is mounted."""

    kind: str
    root: Path
    device: str | None


def _kernel_filesystems() -> frozenset[str]:
    try:
        with open("/proc/filesystems", encoding="ascii") as table:
            return frozenset(line.split()[-1] for line in table if line.strip())
    except OSError:
        return frozenset()


def unsupported(kind: str) -> str | None:
    """Why ``kind`` cannot be mounted here, or None when it can."""
    if os.geteuid() != 0:
        return f"{kind}: mounting needs root (running as uid {os.geteuid()})"
    if shutil.which("mount") is None:
        return f"{kind}: the mount tool is not installed"
    if kind not in _kernel_filesystems():
        return f"{kind}: the kernel does not support it (not in /proc/filesystems)"
    if kind == TMPFS:
        return None
    for tool in ("losetup", _MKFS[kind][0]):
        if shutil.which(tool) is None:
            return f"{kind}: {tool} is not installed"
    if not os.path.exists("/dev/loop-control"):
        return f"{kind}: no loop device support (/dev/loop-control is missing)"
    return None


class CommandFailed(RuntimeError):
    """A system tool (mount, losetup, mkfs) exited with an error."""


class CannotMount(Exception):
    """Setting a filesystem up failed: the machine cannot do it (not a test failure).

    Being root is not always enough: a container may lack the capability to
    mount, or have no loop devices to attach.
    """


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CommandFailed(
            f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout.strip()


@contextlib.contextmanager
def mounted(kind: str, workdir: Path) -> Iterator[Mount]:
    """A fresh ``kind`` filesystem mounted under ``workdir`` for the block's duration.

    Everything set up is undone in reverse order however the block ends; an
    unmount that finds the filesystem busy falls back to a lazy one so the loop
    device can still be detached.
    """

    def set_up(*argv: str) -> str:
        try:
            return _run(*argv)
        except CommandFailed as exc:
            raise CannotMount(f"{kind}: {exc}") from exc

    root = workdir / f"{kind}-mnt"
    root.mkdir()
    with contextlib.ExitStack() as undo:
        undo.callback(root.rmdir)
        if kind == TMPFS:
            set_up(
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={TMPFS_SIZE},mode=0755",
                "tmpfs",
                str(root),
            )
            undo.callback(_unmount, root)
            yield Mount(kind, root, None)
            return
        image = workdir / f"{kind}.img"
        with open(image, "wb") as sparse:
            sparse.truncate(_IMAGE_MIB[kind] * MiB)
        undo.callback(image.unlink)
        device = set_up("losetup", "--find", "--show", str(image))
        undo.callback(_run, "losetup", "--detach", device)
        set_up(*_MKFS[kind], device)
        set_up("mount", "-t", kind, device, str(root))
        undo.callback(_unmount, root)
        yield Mount(kind, root, device)


def _unmount(root: Path) -> None:
    try:
        _run("umount", str(root))
    except CommandFailed:
        _run("umount", "--lazy", str(root))


def remount(mount: Mount, *, read_only: bool) -> None:
    """Switch ``mount`` between read-only and read-write."""
    _run("mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(mount.root))


@contextlib.contextmanager
def read_only(mount: Mount) -> Iterator[None]:
    """``mount`` read-only inside the block, read-write again after it."""
    remount(mount, read_only=True)
    try:
        yield
    finally:
        remount(mount, read_only=False)


def btrfs_subvolume(mount: Mount, name: str) -> Path:
    """A new btrfs subvolume in ``mount``: its inodes show another device number."""
    path = mount.root / name
    try:
        _run("btrfs", "subvolume", "create", str(path))
    except CommandFailed as exc:
        raise CannotMount(f"{BTRFS_SUBVOLUME}: {exc}") from exc
    return path


# Allocation sizes filled() tries, largest first: the last one is a page, so
# what a full filesystem has left is less than one.
_FILL_CHUNKS: Final = tuple(MiB * 64 >> shift for shift in range(0, 16, 2))


@contextlib.contextmanager
def filled(mount: Mount, leave: int) -> Iterator[None]:
    """All the free space of ``mount`` but about ``leave`` bytes taken, inside
    the block, by a file removed after it.

    ``leave`` bytes are set aside in a file first; the
    filler then allocates chunks, each a quarter of the one before, down to a
    page, until the filesystem refuses each; then the set-aside file goes. What
    is free after that is ``leave`` bytes, give or take a few pages, whatever
    the filesystem keeps for root or for itself (which statvfs does not say
    exactly).
    """
    reserve = mount.root / "reserve"
    if leave:
        _allocate(reserve, leave)
    filler = mount.root / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        size = 0
        for chunk in _FILL_CHUNKS:
            while True:
                try:
                    os.posix_fallocate(fd, size, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                size += chunk
        os.fsync(fd)
    finally:
        os.close(fd)
    if leave:
        reserve.unlink()
        # A copy-on-write filesystem frees the blocks at its next commit.
        os.sync()
    try:
        yield
    finally:
        filler.unlink()


def _allocate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def mount_or_skip(
    kind: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mount]:
    """The body of a module fixture: ``kind`` mounted, or the test skipped saying why.

    Besides ``KINDS`` it takes ``DEFAULT`` (a directory where the tests already
    run) and ``BTRFS_SUBVOLUME``.
    """
    workdir = tmp_path_factory.mktemp(kind)
    if kind == DEFAULT:
        yield Mount(kind, workdir, None)
        return
    base = "btrfs" if kind == BTRFS_SUBVOLUME else kind
    reason = unsupported(base)
    if reason is not None:
        pytest.skip(reason)
    if kind == BTRFS_SUBVOLUME and shutil.which("btrfs") is None:
        pytest.skip(f"{kind}: the btrfs tool is not installed")
    with contextlib.ExitStack() as stack:
        try:
            mount = stack.enter_context(mounted(base, workdir))
            if kind == BTRFS_SUBVOLUME:
                mount = Mount(kind, btrfs_subvolume(mount, "subvolume"), mount.device)
        except CannotMount as exc:
            pytest.skip(f"cannot mount here: {exc}")
        yield mount
