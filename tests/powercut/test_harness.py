"""The power-cut harness's own parts, checked without qemu.

The disk keeps only what was flushed (a small NBD client speaks to
``VolatileDisk`` the way qemu does: fixed newstyle, ``NBD_OPT_GO``), the kit
loads modules after what they need and finds the kernel's PVH entry, and
the console reader takes no acknowledgement the kill cut short. These run
in the main test command.
"""

from __future__ import annotations

import lzma
import random
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from power_cut import Console
from powercut_kit import (
    elf_notes,
    load_order,
    module_name,
    parse_modules_dep,
    uncompressed_kernel,
)
from volatile_disk import BLOCK, Drop, VolatileDisk

SIZE = 16 * BLOCK
OLD = b"o"
NEW = b"n"


class Client:
    """The client side of the NBD protocol, as far as these tests need it."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(10)
        magic, _option_magic, _flags = struct.unpack(">8sQH", self._get(18))
        assert magic == b"NBDMAGIC"
        self.sock.sendall(struct.pack(">I", 1 | 2))  # fixed newstyle, no zeroes
        self.sock.sendall(struct.pack(">QII", 0x49484156454F5054, 7, 6) + bytes(6))
        while True:
            _magic, _option, kind, length = struct.unpack(">QIII", self._get(20))
            self._get(length)
            if kind == 1:  # NBD_REP_ACK: transmission begins
                break
        self.handle = 0

    def _get(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "the disk closed the connection"
            data += chunk
        return data

    def request(
        self,
        kind: int,
        offset: int = 0,
        data: bytes = b"",
        flags: int = 0,
        length: int | None = None,
    ) -> bytes:
        self.handle += 1
        size = len(data) if length is None else length
        header = struct.pack(
            ">IHHQQI", 0x25609513, flags, kind, self.handle, offset, size
        )
        self.sock.sendall(header + data)
        magic, error, handle = struct.unpack(">IIQ", self._get(16))
        assert (magic, error, handle) == (0x67446698, 0, self.handle)
        return self._get(size) if kind == 0 else b""

    def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        self.request(1, offset, data, flags=1 if fua else 0)

    def read(self, offset: int, length: int) -> bytes:
        return self.request(0, offset, length=length)

    def flush(self) -> None:
        self.request(3)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(OLD * SIZE)
    return path


@pytest.fixture
def disk(image: Path, tmp_path: Path) -> Iterator[VolatileDisk]:
    served = VolatileDisk(image, tmp_path / "disk.sock")
    yield served
    served.close()


def test_reads_see_unflushed_writes(disk: VolatileDisk, image: Path) -> None:
    client = Client(disk.socket_path)
    client.write(100, NEW * 5000)
    assert client.read(0, 6000) == OLD * 100 + NEW * 5000 + OLD * 900
    assert image.read_bytes() == OLD * SIZE


def test_a_cut_keeps_what_was_flushed_and_drops_the_rest(
    disk: VolatileDisk, image: Path
) -> None:
    client = Client(disk.socket_path)
    client.write(0, NEW * BLOCK)
    client.flush()
    client.write(BLOCK, NEW * BLOCK)
    report = disk.power_cut(Drop.ALL, random.Random(0))
    assert (report.unflushed_blocks, report.landed_blocks) == (1, 0)
    assert image.read_bytes() == NEW * BLOCK + OLD * (SIZE - BLOCK)


def test_a_fua_write_survives_a_cut(disk: VolatileDisk, image: Path) -> None:
    client = Client(disk.socket_path)
    client.write(2 * BLOCK, NEW * 10, fua=True)
    disk.power_cut(Drop.ALL, random.Random(0))
    assert image.read_bytes() == OLD * 2 * BLOCK + NEW * 10 + OLD * (
        SIZE - 2 * BLOCK - 10
    )


def test_a_partial_drop_lands_some_whole_blocks(
    disk: VolatileDisk, image: Path
) -> None:
    client = Client(disk.socket_path)
    client.write(0, NEW * SIZE)
    report = disk.power_cut(Drop.PART, random.Random(1))
    blocks = [image.read_bytes()[i : i + BLOCK] for i in range(0, SIZE, BLOCK)]
    assert set(blocks) == {OLD * BLOCK, NEW * BLOCK}
    assert blocks.count(NEW * BLOCK) == report.landed_blocks
    assert report.unflushed_blocks == SIZE // BLOCK


def test_a_lying_disk_acknowledges_flushes_and_keeps_nothing(
    image: Path, tmp_path: Path
) -> None:
    disk = VolatileDisk(image, tmp_path / "lying.sock", lying=True)
    try:
        client = Client(disk.socket_path)
        client.write(0, NEW * BLOCK)
        client.flush()
        client.write(BLOCK, NEW * BLOCK, fua=True)
        disk.power_cut(Drop.ALL, random.Random(0))
    finally:
        disk.close()
    assert image.read_bytes() == OLD * SIZE


def test_a_disk_cut_mid_burst_takes_no_later_request(
    disk: VolatileDisk, image: Path
) -> None:
    client = Client(disk.socket_path)
    disk.cut_after_writes(2)
    client.write(0, NEW * BLOCK)
    client.sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 99, BLOCK, BLOCK))
    client.sock.sendall(NEW * BLOCK)
    assert disk.cut_reached.wait(10)
    client.sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 3, 100, 0, 0))
    report = disk.power_cut(Drop.PART, random.Random(0))
    # The second write reached the cache; the flush after the cut did nothing.
    assert report.unflushed_blocks == 2
    assert image.read_bytes()[2 * BLOCK :] == OLD * (SIZE - 2 * BLOCK)


def test_modules_load_after_what_they_need() -> None:
    deps = parse_modules_dep(
        "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n"
        "kernel/fs/jbd2/jbd2.ko: kernel/lib/crc16.ko\n"
        "kernel/lib/crc16.ko:\n"
        "kernel/fs/xfs/xfs.ko.xz: kernel/lib/libcrc32c.ko\n"
        "kernel/lib/libcrc32c.ko:\n"
    )
    order = load_order(deps, ["ext4", "xfs", "built_in_module"])
    assert order == [
        "kernel/lib/crc16.ko",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/fs/ext4/ext4.ko",
        "kernel/lib/libcrc32c.ko",
        "kernel/fs/xfs/xfs.ko.xz",
    ]
    assert module_name("kernel/net/9p/9pnet-virtio.ko.zst") == "9pnet_virtio"


def _elf_with_notes(*notes: tuple[bytes, int, bytes]) -> bytes:
    """A minimal ELF64 executable with one PT_NOTE segment holding ``notes``."""
    body = b""
    for name, kind, desc in notes:
        body += struct.pack("<III", len(name), len(desc), kind)
        body += name + bytes(-len(name) % 4) + desc + bytes(-len(desc) % 4)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # program headers right after
    struct.pack_into("<HH", header, 0x36, 56, 1)
    segment = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(body), len(body), 4)
    return bytes(header) + segment + body


def test_the_kernel_and_its_pvh_note_come_out_of_a_bzimage() -> None:
    pvh = (b"Xen\0", 18, struct.pack("<I", 0x1000000))
    elf = _elf_with_notes((b"Linux\0", 6, b"6.1"), pvh)
    # A bzImage: set-up code, then the compressed kernel, then trailing data;
    # a stray xz magic before the real stream is no kernel.
    bzimage = b"MZ" + bytes(500) + b"\xfd7zXZ\0junk" + lzma.compress(elf) + bytes(64)
    found = uncompressed_kernel(bzimage)
    assert found == elf
    assert elf_notes(found) == [(b"Linux\0", 6, b"6.1"), pvh]
    assert uncompressed_kernel(b"MZ" + bytes(500)) is None


def test_a_line_cut_short_by_the_kill_is_not_read() -> None:
    printer = subprocess.Popen(
        [
            "printf",
            "PC READY 4\\nPC S 5\\nPC A 5 0123456789abcdef\\nPC S 6\\nPC A 6 0123",
        ],
        stdout=subprocess.PIPE,
    )
    console = Console(printer)
    console.join()
    printer.wait()
    assert (console.base, console.started, console.acks) == (
        4,
        6,
        {5: "0123456789abcdef"},
    )
