"""A disk with a volatile write cache: an NBD server over a unix socket.

It serves one image file to one client (qemu's ``nbd`` block driver). A write
goes to a cache of 4 KiB blocks, and reads see it there; the image file holds
only what a flush (``NBD_CMD_FLUSH``) or a write with ``FUA`` made durable. At
the power cut (``freeze()``, then ``power_cut()``) the cache is lost: every
block written since the last flush is dropped, or, with ``Drop.PART``, each
such block independently lands or not, as a disk writing back its cache in
any order would leave it. A ``lying`` disk answers flushes and FUA writes
without making anything durable: the broken disk the suite must catch.

The protocol is the fixed-newstyle handshake (``NBD_OPT_GO`` and the old
``NBD_OPT_EXPORT_NAME``) with simple replies; structured replies and every
other option are refused, which a client must accept.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import random
import socket
import struct
import threading
from pathlib import Path
from typing import Final

import attrs

BLOCK: Final = 4096

_NBDMAGIC: Final = b"NBDMAGIC"
_IHAVEOPT: Final = 0x49484156454F5054
_REPLY_MAGIC: Final = 0x3E889045565A9
_REQUEST_MAGIC: Final = 0x25609513
_SIMPLE_REPLY_MAGIC: Final = 0x67446698

_FLAG_FIXED_NEWSTYLE: Final = 1
_FLAG_NO_ZEROES: Final = 2
_CLIENT_NO_ZEROES: Final = 2

_OPT_EXPORT_NAME: Final = 1
_OPT_ABORT: Final = 2
_OPT_INFO: Final = 6
_OPT_GO: Final = 7
_REP_ACK: Final = 1
_REP_INFO: Final = 3
_REP_ERR_UNSUP: Final = 0x80000001
_INFO_EXPORT: Final = 0

_TFLAG_HAS_FLAGS: Final = 1
_TFLAG_SEND_FLUSH: Final = 4
_TFLAG_SEND_FUA: Final = 8
_TRANSMISSION_FLAGS: Final = _TFLAG_HAS_FLAGS | _TFLAG_SEND_FLUSH | _TFLAG_SEND_FUA

_CMD_READ: Final = 0
_CMD_WRITE: Final = 1
_CMD_DISC: Final = 2
_CMD_FLUSH: Final = 3
_CMD_FLAG_FUA: Final = 1

_REQUEST: Final = struct.Struct(">IHHQQI")
_SIMPLE_REPLY: Final = struct.Struct(">IIQ")
_OPTION: Final = struct.Struct(">QII")
_OPTION_REPLY: Final = struct.Struct(">QIII")


class Drop(enum.Enum):
    """What a power cut does to the blocks written since the last flush."""

    ALL = "all"
    """every one is lost"""
    PART = "part"
    """each one lands or is lost, independently (a cache written back in any order)"""


@attrs.frozen
class CutReport:
    """What the power cut found in the cache and what of it landed."""

    unflushed_blocks: int
    landed_blocks: int


class ProtocolError(Exception):
    """The client sent something this server does not speak."""


def _receive(conn: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = conn.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class VolatileDisk:
    """``image`` served at ``socket_path`` with a volatile write cache.

    ``lying``: flushes and FUA writes are acknowledged and do nothing.
    """

    def __init__(self, image: Path, socket_path: Path, *, lying: bool = False) -> None:
        self.image = image
        self.socket_path = socket_path
        self.lying = lying
        self.size = image.stat().st_size
        self.writes = 0
        self.flushes = 0
        self.error: BaseException | None = None
        self._cache: dict[int, bytearray] = {}
        self._lock = threading.Lock()
        self._frozen = False
        self._cut_after_writes: int | None = None
        self.cut_reached = threading.Event()
        self._fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(socket_path))
        self._listener.listen(1)
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # -- the controls the harness uses -------------------------------------

    def cut_after_writes(self, count: int) -> None:
        """Freeze the disk as the ``count``-th write request from now arrives.

        That request is taken into the cache, and nothing after it: the power
        goes off in the middle of whatever the guest was writing.
        """
        with self._lock:
            self._cut_after_writes = count

    def freeze(self) -> None:
        """The power goes off for the disk: no request from now on is carried out."""
        with self._lock:
            self._frozen = True
        self.cut_reached.set()

    def power_cut(self, drop: Drop, rng: random.Random) -> CutReport:
        """Leave on the image what a power cut now leaves; the disk stays frozen."""
        self.freeze()
        with self._lock:
            blocks = sorted(self._cache)
            landed = (
                [] if drop is Drop.ALL else [b for b in blocks if rng.random() < 0.5]
            )
            for index in landed:
                os.pwrite(self._fd, self._cache[index], index * BLOCK)
            self._cache.clear()
        return CutReport(len(blocks), len(landed))

    def close(self) -> None:
        """Stop serving and release the image and the socket."""
        self.freeze()
        for sock in (self._conn, self._listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._thread.join(timeout=10)
        os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    # -- the cache ------------------------------------------------------------

    def _block(self, index: int) -> bytearray:
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        durable = os.pread(self._fd, BLOCK, index * BLOCK)
        return bytearray(durable.ljust(BLOCK, b"\0"))

    def _read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        end = offset + length
        for index in range(offset // BLOCK, (end + BLOCK - 1) // BLOCK):
            block = self._block(index)
            lo = max(offset, index * BLOCK) - index * BLOCK
            hi = min(end, (index + 1) * BLOCK) - index * BLOCK
            out += block[lo:hi]
        return bytes(out)

    def _write(self, offset: int, data: bytes, fua: bool) -> None:
        end = offset + len(data)
        touched = []
        for index in range(offset // BLOCK, (end + BLOCK - 1) // BLOCK):
            block = self._block(index)
            lo = max(offset, index * BLOCK)
            hi = min(end, (index + 1) * BLOCK)
            block[lo - index * BLOCK : hi - index * BLOCK] = data[
                lo - offset : hi - offset
            ]
            self._cache[index] = block
            touched.append(index)
        if fua and not self.lying:
            for index in touched:
                os.pwrite(self._fd, self._cache.pop(index), index * BLOCK)

    def _flush(self) -> None:
        if self.lying:
            return
        for index, block in sorted(self._cache.items()):
            os.pwrite(self._fd, block, index * BLOCK)
        self._cache.clear()

    # -- the protocol -----------------------------------------------------------

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        self._conn = conn
        try:
            with conn:
                if self._handshake(conn):
                    self._transmit(conn)
        except (EOFError, ConnectionError, OSError):
            # The client went away: qemu was killed, or the disk was closed.
            pass
        except BaseException as exc:
            self.error = exc

    def _option_reply(
        self, conn: socket.socket, option: int, kind: int, data: bytes = b""
    ) -> None:
        conn.sendall(_OPTION_REPLY.pack(_REPLY_MAGIC, option, kind, len(data)) + data)

    def _handshake(self, conn: socket.socket) -> bool:
        conn.sendall(
            _NBDMAGIC
            + struct.pack(">QH", _IHAVEOPT, _FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES)
        )
        (client_flags,) = struct.unpack(">I", _receive(conn, 4))
        export = struct.pack(">QH", self.size, _TRANSMISSION_FLAGS)
        while True:
            magic, option, length = _OPTION.unpack(_receive(conn, _OPTION.size))
            if magic != _IHAVEOPT:
                raise ProtocolError(f"bad option magic {magic:#x}")
            _receive(conn, length)
            if option == _OPT_EXPORT_NAME:
                zeroes = b"" if client_flags & _CLIENT_NO_ZEROES else b"\0" * 124
                conn.sendall(export + zeroes)
                return True
            if option == _OPT_ABORT:
                self._option_reply(conn, option, _REP_ACK)
                return False
            if option in (_OPT_INFO, _OPT_GO):
                info = struct.pack(">H", _INFO_EXPORT) + export
                self._option_reply(conn, option, _REP_INFO, info)
                self._option_reply(conn, option, _REP_ACK)
                if option == _OPT_GO:
                    return True
                continue
            self._option_reply(conn, option, _REP_ERR_UNSUP)

    def _transmit(self, conn: socket.socket) -> None:
        while True:
            magic, flags, kind, handle, offset, length = _REQUEST.unpack(
                _receive(conn, _REQUEST.size)
            )
            if magic != _REQUEST_MAGIC:
                raise ProtocolError(f"bad request magic {magic:#x}")
            payload = _receive(conn, length) if kind == _CMD_WRITE else b""
            if kind == _CMD_DISC:
                return
            error = 0
            data = b""
            with self._lock:
                if self._frozen:
                    # Powered off: nothing is carried out, nothing is answered.
                    continue
                if offset + length > self.size and kind in (_CMD_READ, _CMD_WRITE):
                    error = errno.EINVAL
                elif kind == _CMD_READ:
                    data = self._read(offset, length)
                elif kind == _CMD_WRITE:
                    self.writes += 1
                    self._write(offset, payload, bool(flags & _CMD_FLAG_FUA))
                    if self._cut_after_writes is not None:
                        self._cut_after_writes -= 1
                        if self._cut_after_writes <= 0:
                            self._frozen = True
                            self.cut_reached.set()
                            continue
                elif kind == _CMD_FLUSH:
                    self.flushes += 1
                    self._flush()
                else:
                    error = errno.EINVAL
            conn.sendall(_SIMPLE_REPLY.pack(_SIMPLE_REPLY_MAGIC, error, handle) + data)
