"""The guest kit: a Debian kernel, busybox and initramfs images, built once and cached.

Nothing is installed on the host: ``apt-get download`` fetches the current
``linux-image-*-amd64`` and ``busybox-static`` packages, ``dpkg -x`` unpacks
them into the cache, and an initramfs per filesystem is assembled from them
here: busybox, the kernel modules a guest on that filesystem needs (in the
order ``modules.dep`` gives), and an ``/init`` script. The kernel boots
uncompressed through its PVH entry point where it has one: under emulation,
unpacking it and its real-mode start cost seconds a round. The host's Python
and this package reach the guest over virtio-9p, so the kit holds no Python
of its own.

Everything lives in ``cache_dir()`` (outside the repository): the ``.deb``
files, the unpacked trees, the kernel, the initramfs images. A kit whose
inputs have not changed is reused.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import attrs

# The modules /init loads, each after what modules.dep says it needs: the
# virtio transport and disk, 9p over virtio, and the round's filesystem (only
# it: loading the others costs seconds under emulation, btrfs's raid6_pq
# benchmarking its algorithms as it loads). The crc32c implementation is a
# soft dependency (requested by name at run time, which needs a modprobe the
# initramfs does not have), so it is listed itself.
BASE_MODULES: Final = (
    "crc32c_generic",
    "virtio_pci",
    "virtio_blk",
    "9pnet_virtio",
    "9p",
)
FILESYSTEM_MODULES: Final = {"ext4": ("ext4",), "xfs": ("xfs",), "btrfs": ("btrfs",)}
# Part of the kit's cache key: a change to /init or to how the kit is built
# makes a new initramfs.
KIT_FORMAT: Final = "4"
# The ELF note of a kernel's PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY), which
# lets qemu start an uncompressed kernel directly in 32-bit protected mode.
_PVH_NOTE: Final = (b"Xen\0", 18)


class KitUnavailable(Exception):
    """A prerequisite of the guest kit cannot be had here (the reason says which)."""


@attrs.frozen
class Kit:
    """A bootable guest: its kernel, an initramfs per filesystem, the kernel release."""

    kernel: Path
    initramfs: dict[str, Path]
    release: str


def cache_dir() -> Path:
    """Where the kit and the disk images live: never inside the repository."""
    override = os.environ.get("SESSIONSTORE_POWERCUT_CACHE")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return Path(xdg) / "sessionstore-powercut"


def _run(argv: Sequence[str], cwd: Path | None = None) -> bytes:
    """A tool's output; KitUnavailable when it is missing or fails."""
    try:
        done = subprocess.run(list(argv), cwd=cwd, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise KitUnavailable(f"{argv[0]} is not installed") from exc
    if done.returncode != 0:
        raise KitUnavailable(
            f"{' '.join(argv)} failed ({done.returncode}): "
            f"{done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout


def kernel_package() -> str:
    """The versioned kernel package the ``linux-image-amd64`` metapackage names."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"]).decode()
    found: list[str] = re.findall(r"Depends:\s*(linux-image-\S+-amd64)\b", out)
    if not found:
        raise KitUnavailable(f"apt-cache names no kernel for linux-image-amd64: {out}")
    return found[0]


def _download(package: str, into: Path) -> Path:
    """The package's .deb in ``into``, fetched with ``apt-get download`` once."""
    have = sorted(into.glob(f"{package}_*.deb"))
    if have:
        return have[-1]
    _run(["apt-get", "download", "-q", package], cwd=into)
    have = sorted(into.glob(f"{package}_*.deb"))
    if not have:
        raise KitUnavailable(f"apt-get download {package} left no .deb in {into}")
    return have[-1]


def _unpack(deb: Path, into: Path) -> Path:
    tree = into / deb.stem
    if not tree.is_dir():
        partial = into / (deb.stem + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        _run(["dpkg", "-x", str(deb), str(partial)])
        partial.rename(tree)
    return tree


def parse_modules_dep(text: str) -> dict[str, tuple[str, ...]]:
    """``modules.dep``: each module's path to the paths it depends on."""
    deps: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        module, _, needs = line.partition(":")
        deps[module.strip()] = tuple(needs.split())
    return deps


def module_name(path: str) -> str:
    """``kernel/fs/ext4/ext4.ko.xz`` -> ``ext4`` (dashes as underscores)."""
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def load_order(deps: dict[str, tuple[str, ...]], wanted: Iterable[str]) -> list[str]:
    """The module paths to load for ``wanted``: every dependency before its user.

    ``modules.dep`` lists a module's dependencies transitively, but not in an
    order to load them in, so the order is a depth-first walk.
    """
    by_name = {module_name(path): path for path in deps}
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str, chain: tuple[str, ...]) -> None:
        if path in seen:
            return
        if path in chain:
            raise KitUnavailable(f"modules.dep has a cycle through {path}")
        for needed in deps.get(path, ()):
            visit(needed, (*chain, path))
        seen.add(path)
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            # Built into this kernel: nothing to load.
            continue
        visit(path, ())
    return order


def modinfo(elf: bytes) -> dict[str, str]:
    """The ``.modinfo`` section of a kernel module (an ELF64 little-endian object)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise KitUnavailable("a kernel module is not a 64-bit little-endian ELF")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        at = shoff + index * shentsize
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", elf, at
        )
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        end = elf.index(b"\0", names_at + name)
        if elf[names_at + name : end] == b".modinfo":
            fields: dict[str, str] = {}
            for item in elf[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    fields.setdefault(key, value)
            return fields
    return {}


def modules_dep(modules_root: Path) -> str:
    """``modules.dep`` for an unpacked module tree, as ``depmod`` would write it.

    A kernel package ships no ``modules.dep`` (``depmod`` makes it on install),
    so it is made here from each module's ``depends=`` field, closed
    transitively as ``depmod`` closes it.
    """
    paths = sorted(
        str(path.relative_to(modules_root))
        for path in modules_root.rglob("*.ko*")
        if re.search(r"\.ko(\.xz|\.zst|\.gz)?$", path.name)
    )
    by_name = {module_name(path): path for path in paths}
    direct: dict[str, list[str]] = {}
    for path in paths:
        depends = modinfo(_module_bytes(modules_root / path)).get("depends", "")
        direct[path] = [
            by_name[name.replace("-", "_")]
            for name in depends.split(",")
            if name and name.replace("-", "_") in by_name
        ]
    lines = []
    for path in paths:
        closure: list[str] = []
        stack = list(direct[path])
        while stack:
            needed = stack.pop(0)
            if needed not in closure:
                closure.append(needed)
                stack.extend(direct[needed])
        lines.append(f"{path}: {' '.join(closure)}".rstrip())
    return "\n".join(lines) + "\n"


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return _run(["zstd", "-dc", str(path)])
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


class Cpio:
    """An initramfs image in the ``newc`` cpio format, built in memory."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes) -> None:
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{value:08x}"
            for value in (
                self._ino,
                mode,
                0,  # uid
                0,  # gid
                1,  # nlink
                0,  # mtime: fixed, so the image is reproducible
                len(data),
                0,
                0,
                0,
                0,
                len(encoded),
                0,
            )
        )
        self._ino += 1
        self._out.write(header.encode() + encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755, b"")

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return self._out.getvalue()


INIT_SCRIPT: Final = r"""#!/bin/busybox sh
# The guest's init: modules, the shared host trees, the disk, then the saver.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
fail() { echo "PC ERR init: $*"; echo o > /proc/sysrq-trigger; sleep 60; }
for module in $(cat /modules.order); do
    insmod "/modules/$module" || fail "insmod $module"
done
echo 1 > /proc/sys/kernel/sysrq
# PC_SHARES: tag=path pairs, each a host tree mounted read-only at its own path.
for share in $PC_SHARES; do
    tag=${share%%=*}; path=${share#*=}
    mkdir -p "$path"
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 \
        "$tag" "$path" || fail "mount 9p $tag at $path"
done
mkdir -p /mnt/disk
mount -t "$PC_FS" /dev/vda /mnt/disk || fail "mount $PC_FS /dev/vda"
cd /tmp
HOME=/tmp PATH=/bin PYTHONDONTWRITEBYTECODE=1 "$PC_PYTHON" "$PC_SAVER" \
    || fail "the saver exited ($?)"
fail "the saver returned"
"""


def _symlinks_to_usr() -> dict[str, str]:
    """Top-level names the host makes links into /usr (a merged /usr)."""
    links = {}
    for name in ("lib", "lib64", "lib32", "libx32", "bin", "sbin"):
        path = Path("/") / name
        if path.is_symlink():
            links[name] = os.readlink(path)
    return links


def build(release: str, kernel_tree: Path, busybox_tree: Path, fs: str) -> bytes:
    """The initramfs for guests on ``fs``: busybox, the ordered modules and /init."""
    modules_root = kernel_tree / "lib" / "modules" / release
    dep_file = modules_root / "modules.dep"
    if not dep_file.is_file():
        dep_file.write_text(modules_dep(modules_root))
    order = load_order(
        parse_modules_dep(dep_file.read_text()),
        (*BASE_MODULES, *FILESYSTEM_MODULES[fs]),
    )
    busybox = busybox_tree / "bin" / "busybox"
    if not busybox.is_file():
        raise KitUnavailable(f"busybox-static has no {busybox}")
    image = Cpio()
    links = _symlinks_to_usr()
    for name in ("dev", "proc", "sys", "tmp", "mnt", "modules", "usr"):
        image.directory(name)
    if "bin" in links:
        # /bin is the host's /usr/bin once /usr is mounted; busybox stays apart.
        del links["bin"]
    image.directory("bin")
    for name, target in links.items():
        if name != "sbin":
            image.symlink(name, target)
    image.file("bin/busybox", busybox.read_bytes(), 0o755)
    loaded = []
    for path in order:
        name = module_name(path) + ".ko"
        image.file(f"modules/{name}", _module_bytes(modules_root / path))
        loaded.append(name)
    image.file("modules.order", ("\n".join(loaded) + "\n").encode())
    image.file("init", INIT_SCRIPT.encode(), 0o755)
    # Uncompressed: under emulation the guest would take a second to unzip it.
    return image.finish()


def prepare() -> Kit:
    """The kit, built or reused; KitUnavailable says what is missing."""
    if sys.platform != "linux":
        raise KitUnavailable(f"the guest kit needs Linux, not {sys.platform}")
    for tool in ("apt-get", "apt-cache", "dpkg"):
        if shutil.which(tool) is None:
            raise KitUnavailable(f"{tool} is not installed")
    root = cache_dir() / "kit"
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    package = kernel_package()
    kernel_tree = _unpack(_download(package, debs), root)
    busybox_tree = _unpack(_download("busybox-static", debs), root)
    releases = sorted((kernel_tree / "lib" / "modules").iterdir())
    if not releases:
        raise KitUnavailable(f"{package} holds no kernel modules")
    release = releases[-1].name
    kernel = kernel_tree / "boot" / f"vmlinuz-{release}"
    if not kernel.is_file():
        raise KitUnavailable(f"{package} holds no {kernel.name}")
    initramfs = {}
    for fs in FILESYSTEM_MODULES:
        key = hashlib.sha256(
            f"{KIT_FORMAT}\n{kernel_tree.name}\n{busybox_tree.name}\n{fs}\n"
            f"{INIT_SCRIPT}".encode()
        ).hexdigest()[:16]
        initramfs[fs] = root / f"initramfs-{fs}-{key}.cpio"
        if not initramfs[fs].is_file():
            partial = initramfs[fs].with_suffix(".partial")
            partial.write_bytes(build(release, kernel_tree, busybox_tree, fs))
            partial.rename(initramfs[fs])
    return Kit(pvh_kernel(kernel) or kernel, initramfs, release)


def elf_notes(elf: bytes) -> list[tuple[bytes, int, bytes]]:
    """The notes of an ELF64 little-endian executable: (name, type, description)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise KitUnavailable("the kernel is not a 64-bit little-endian ELF")
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    notes = []
    for index in range(phnum):
        kind, _flags, offset, _vaddr, _paddr, size = struct.unpack_from(
            "<IIQQQQ", elf, phoff + index * phentsize
        )
        if kind != 4:  # PT_NOTE
            continue
        at, end = offset, offset + size
        while at + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, at)
            name_at = at + 12
            desc_at = name_at + (namesz + 3) // 4 * 4
            notes.append(
                (
                    elf[name_at : name_at + namesz],
                    note_type,
                    elf[desc_at : desc_at + descsz],
                )
            )
            at = desc_at + (descsz + 3) // 4 * 4
    return notes


def _decompressed(magic: bytes, data: bytes) -> bytes:
    """The stream at the start of ``data``, decompressed; b"" if it is not one."""
    try:
        if magic.startswith(b"\xfd7zXZ"):
            return lzma.LZMADecompressor().decompress(data)
        return zlib.decompressobj(31).decompress(data)
    except (lzma.LZMAError, zlib.error):
        return b""


def uncompressed_kernel(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage compressed with xz or gzip, or None."""
    for magic in (b"\xfd7zXZ\0", b"\x1f\x8b\x08\0"):
        at = bzimage.find(magic)
        while at >= 0:
            elf = _decompressed(magic, bzimage[at:])
            if elf[:4] == b"\x7fELF":
                return elf
            at = bzimage.find(magic, at + 1)
    return None


def pvh_kernel(bzimage: Path) -> Path | None:
    """The kernel uncompressed, cached beside ``bzimage``, if it has a PVH entry.

    None when it cannot be taken out of the bzImage or has no PVH entry point:
    the bzImage then boots as it is, only slower.
    """
    vmlinux = bzimage.with_name(bzimage.name.replace("vmlinuz", "vmlinux", 1) + ".pvh")
    if vmlinux.is_file():
        return vmlinux
    elf = uncompressed_kernel(bzimage.read_bytes())
    if elf is None or not any(
        (name, kind) == _PVH_NOTE for name, kind, _ in elf_notes(elf)
    ):
        return None
    partial = vmlinux.with_suffix(".partial")
    partial.write_bytes(elf)
    partial.rename(vmlinux)
    return vmlinux
