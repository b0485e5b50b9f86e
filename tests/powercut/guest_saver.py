"""The save loop the power-cut guest runs, and the checkpoints it saves.

Run inside the guest (by its /init, with the host's Python shared over 9p),
it saves self-verifying checkpoints into the one session under
``/mnt/disk/repo`` until the power goes, printing on the serial console:

``PC READY <seq>``
    the session was opened; ``<seq>`` is the sequence number of the checkpoint
    that loaded (0 for none);
``PC S <seq>``
    a save (or, for a CheckpointWriter, a ``submit``) of ``<seq>`` starts;
``PC A <seq> <digest>``
    the save of ``<seq>`` returned (a writer's ``flush()`` did): from now on it
    must survive;
``PC C <layout>``
    a conversion to ``<layout>`` starts (it changes no checkpoint);
``PC ERR <error>``
    the loop failed; the round fails.

The environment says what to do: ``PC_PATH`` the save path (a library path
from ``LIBRARY_PATHS`` or a control from ``CONTROL_PATHS``), ``PC_PANIC_AFTER``
a number of acknowledgements after which the guest kernel panics at once
(0: never). ``SESSIONSTORE_BACKEND`` chooses the writer backend.

A checkpoint is ``MAGIC``, its sequence number, its body's length and SHA-256,
then the body (random bytes): whole or not is decided by the bytes alone.
Imported on the host, this module gives ``parse()``; importing it has no
other effect.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import random
import struct
import sys
from collections.abc import Callable
from typing import Final

MAGIC: Final = b"PCUT"
_HEAD: Final = struct.Struct(">4sQQ32s")
MIN_SIZE: Final = 200
MAX_SIZE: Final = 400 * 1024
REPO: Final = "/mnt/disk/repo"

# The save paths of the library this suite covers.
LIBRARY_PATHS: Final = (
    "replace",
    "slotted",
    "held-replace",
    "held-slotted",
    "writer-replace",
    "writer-slotted",
    "convert",
)
# Broken saves the suite must catch; the lying disk runs the library's own
# replace save on a disk that acknowledges flushes without doing them.
NO_DATA_FLUSH: Final = "no-data-flush"
NO_DIR_FLUSH: Final = "no-dir-flush"
OVERWRITE_NEWEST: Final = "overwrite-newest"
LYING_DISK: Final = "lying-disk"
CONTROL_PATHS: Final = (NO_DATA_FLUSH, NO_DIR_FLUSH, OVERWRITE_NEWEST, LYING_DISK)


class NotACheckpoint(ValueError):
    """Bytes that are not one whole checkpoint of this suite."""


def make(seq: int, size: int) -> bytes:
    """A checkpoint with sequence number ``seq`` of about ``size`` bytes."""
    body = os.urandom(max(size - _HEAD.size, 16))
    return _HEAD.pack(MAGIC, seq, len(body), hashlib.sha256(body).digest()) + body


def parse(data: bytes) -> tuple[int, str]:
    """The sequence number and digest of a whole checkpoint; (0, "") for ``b""``."""
    if not data:
        return 0, ""
    if len(data) < _HEAD.size:
        raise NotACheckpoint(f"{len(data)} bytes, shorter than a header")
    magic, seq, length, digest = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise NotACheckpoint(f"bad magic {magic!r}")
    if length != len(data) - _HEAD.size:
        raise NotACheckpoint(f"header says {length} bytes, found {len(data) - 56}")
    if hashlib.sha256(data[_HEAD.size :]).digest() != digest:
        raise NotACheckpoint(f"checkpoint {seq}: body does not match its digest")
    return seq, digest.hex()[:16]


def random_size(rng: random.Random, top: int = MAX_SIZE) -> int:
    """Sizes spread evenly on a log scale from a few hundred bytes to ``top``."""
    return int(math.exp(rng.uniform(math.log(MIN_SIZE), math.log(top))))


def say(*words: object) -> None:
    print("PC", *words, flush=True)


class Loop:
    """The save loop: numbering, acknowledgements and the panic after the k-th."""

    def __init__(self, seq: int, panic_after: int) -> None:
        self.seq = seq
        self.acks = 0
        self.panic_after = panic_after
        self.rng = random.Random()

    def next(self, top: int = MAX_SIZE, size: int | None = None) -> bytes:
        self.seq += 1
        say("S", self.seq)
        return make(self.seq, random_size(self.rng, top) if size is None else size)

    def ack(self, data: bytes) -> None:
        seq, digest = parse(data)
        say("A", seq, digest)
        self.acks += 1
        if self.acks == self.panic_after:
            with open("/proc/sysrq-trigger", "w") as trigger:
                trigger.write("c")


def _replace_without(location: str, data: bytes, *, data_flush: bool) -> None:
    """The replace sequence missing one flush: the data's (``data_flush`` False),
    or else the directory's."""
    directory = os.open(location, os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX | fcntl.LOCK_NB)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open("session.next", flags, 0o600, dir_fd=directory)
        try:
            os.write(fd, data)
            if data_flush:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename("session.next", "session", src_dir_fd=directory, dst_dir_fd=directory)
        if not data_flush:
            os.fsync(directory)
    finally:
        os.close(directory)


def _overwrite_newest(path: str, data: bytes) -> None:
    """A slotted save that writes over the newest record instead of the other."""
    from sessionstore._slots_format import (
        FILE_HEADER_SIZE,
        RECORD_HEADER_SIZE,
        decode_file_header,
        decode_record_header,
        encode_record_header,
        newest_first,
    )

    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        geometry = decode_file_header(os.pread(fd, FILE_HEADER_SIZE, 0))
        headers = (
            decode_record_header(
                os.pread(fd, RECORD_HEADER_SIZE, geometry.slot_offset(0)),
                geometry.slot_size,
            ),
            decode_record_header(
                os.pread(fd, RECORD_HEADER_SIZE, geometry.slot_offset(1)),
                geometry.slot_size,
            ),
        )
        order = newest_first(headers)
        slot = order[0] if order else 0
        top = max((h.sequence for h in headers if h is not None), default=0)
        record = encode_record_header(top + 1, data) + data
        os.pwrite(fd, record, geometry.slot_offset(slot))
        os.fdatasync(fd)
    finally:
        os.close(fd)


def main() -> None:
    from sessionstore import (
        Layout,
        LockState,
        SessionStorage,
        SessionStorageRepository,
    )

    path = os.environ["PC_PATH"]
    panic_after = int(os.environ.get("PC_PANIC_AFTER", "0"))
    (storage,) = SessionStorageRepository(REPO).get_storage_list()
    if path == "convert":
        # The layout on disk; ``session`` wins while a conversion left both.
        on_disk = os.path.exists(storage.paths.slots) and not os.path.exists(
            storage.paths.checkpoint
        )
        layout = Layout.SLOTTED if on_disk else Layout.REPLACE
    elif "slotted" in path or path == OVERWRITE_NEWEST:
        layout = Layout.SLOTTED
    else:
        layout = Layout.REPLACE
    storage = SessionStorage(storage.location, layout=layout)
    if storage.lock_state() is LockState.STALE:
        storage.break_stale_lock()
    loop = Loop(parse(storage.load_checkpoint())[0], panic_after)
    say("READY", loop.seq)

    save: Callable[[bytes], None]
    if path.startswith("held-"):
        with storage.hold() as held:
            while True:
                data = loop.next()
                held.save_checkpoint(data)
                loop.ack(data)
    if path.startswith("writer-"):
        with storage.writer() as writer:
            while True:
                for _ in range(loop.rng.randint(1, 3)):
                    data = loop.next()
                    writer.submit(data)
                writer.flush()
                loop.ack(data)
    if path == "convert":
        while True:
            data = loop.next()
            storage.save_checkpoint(data)
            loop.ack(data)
            target = Layout.REPLACE if layout is Layout.SLOTTED else Layout.SLOTTED
            say("C", target.value)
            storage = storage.convert_layout(target)
            layout = target
    if path == OVERWRITE_NEWEST:
        if not os.path.exists(storage.paths.slots):
            # Slots large enough for every record the loop saves in place,
            # both holding a record, as after any two library saves.
            for size in (MAX_SIZE, MAX_SIZE // 2):
                data = loop.next(size=size)
                storage.save_checkpoint(data)
                loop.ack(data)
        while True:
            # Records of several 4 KiB blocks, so that a cut can tear one.
            data = loop.next(size=loop.rng.randint(16 * 1024, MAX_SIZE // 2))
            _overwrite_newest(storage.paths.slots, data)
            loop.ack(data)
    if path == NO_DATA_FLUSH:

        def save(data: bytes) -> None:
            _replace_without(storage.location, data, data_flush=False)

    elif path == NO_DIR_FLUSH:

        def save(data: bytes) -> None:
            _replace_without(storage.location, data, data_flush=True)

    else:
        save = storage.save_checkpoint
    while True:
        data = loop.next()
        save(data)
        loop.ack(data)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        say("ERR", repr(exc).replace("\n", " "))
        sys.exit(1)
