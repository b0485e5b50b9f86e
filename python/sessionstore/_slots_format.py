"""The slotted layout's bytes: a file header and two CRC-checked record slots.

Pure functions only. Both writer backends produce and read exactly these bytes,
and the native side is tested against them.

``session.slots``::

    offset 0                 file header (FILE_HEADER_SIZE bytes, written once)
    offset FILE_HEADER_SIZE  slot 0 (slot_size bytes)
    offset ... + slot_size   slot 1 (slot_size bytes)

A slot holds one record: a RECORD_HEADER_SIZE-byte header then the data. The
record's CRC-32 (zlib's) covers the header's first 28 bytes and the data, so a
record torn at any sector boundary, or never written, never passes as valid.
Integers are little-endian.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import Final

import attrs

FILE_MAGIC: Final = b"SESSLOTS"
RECORD_MAGIC: Final = b"SREC"
FORMAT_VERSION: Final = 1

# Slots start on a 4 KiB boundary so a record never shares a page, or a disk
# sector, with the file header or with the other slot.
FILE_HEADER_SIZE: Final = 4096
MIN_SLOT_SIZE: Final = 4096

_FILE_HEADER: Final = struct.Struct("<8sIIQ")  # magic, version, header size, slot size
_FILE_CRC: Final = struct.Struct("<I")
_RECORD_HEADER: Final = struct.Struct("<4sIQQI")  # magic, version, sequence, length, 0
_RECORD_CRC: Final = struct.Struct("<I")
RECORD_HEADER_SIZE: Final = _RECORD_HEADER.size + _RECORD_CRC.size
MAX_SEQUENCE: Final = 2**64 - 1


class SlotsFormatError(ValueError):
    """``session.slots`` is not a file this version can read."""


@attrs.frozen
class FileHeader:
    """The fixed geometry of one slots file."""

    slot_size: int

    def slot_offset(self, slot: int) -> int:
        return FILE_HEADER_SIZE + slot * self.slot_size

    @property
    def file_size(self) -> int:
        return FILE_HEADER_SIZE + 2 * self.slot_size

    def fits(self, length: int) -> bool:
        return RECORD_HEADER_SIZE + length <= self.slot_size


@attrs.frozen
class RecordHeader:
    """A record's header as read, before its data is checked."""

    sequence: int
    length: int
    crc: int
    prefix: bytes
    """the header bytes the CRC covers"""

    def crc_matches(self, data: bytes | bytearray | memoryview) -> bool:
        return zlib.crc32(data, zlib.crc32(self.prefix)) == self.crc


def encode_file_header(slot_size: int) -> bytes:
    """The file header for slots of ``slot_size`` bytes, padded to its full size."""
    head = _FILE_HEADER.pack(FILE_MAGIC, FORMAT_VERSION, FILE_HEADER_SIZE, slot_size)
    head += _FILE_CRC.pack(zlib.crc32(head))
    return head.ljust(FILE_HEADER_SIZE, b"\0")


def decode_file_header(block: bytes) -> FileHeader:
    """The geometry from the first bytes of a slots file; SlotsFormatError if bad."""
    size = _FILE_HEADER.size + _FILE_CRC.size
    if len(block) < size:
        raise SlotsFormatError("slots file is shorter than its header")
    head = block[: _FILE_HEADER.size]
    (crc,) = _FILE_CRC.unpack_from(block, _FILE_HEADER.size)
    magic, version, header_size, slot_size = _FILE_HEADER.unpack(head)
    if magic != FILE_MAGIC or zlib.crc32(head) != crc:
        raise SlotsFormatError("not a slots file (bad magic or header checksum)")
    if version != FORMAT_VERSION or header_size != FILE_HEADER_SIZE:
        raise SlotsFormatError(f"unsupported slots format version {version}")
    # A file of two such slots must fit a file offset (off_t), or no read can reach it.
    too_big = FILE_HEADER_SIZE + 2 * slot_size > 2**63 - 1
    if slot_size < MIN_SLOT_SIZE or slot_size % MIN_SLOT_SIZE or too_big:
        raise SlotsFormatError(f"bad slot size {slot_size}")
    return FileHeader(slot_size)


def encode_record_header(sequence: int, data: bytes | bytearray | memoryview) -> bytes:
    """The header that makes ``data`` a record with ``sequence``."""
    prefix = _RECORD_HEADER.pack(RECORD_MAGIC, FORMAT_VERSION, sequence, len(data), 0)
    return prefix + _RECORD_CRC.pack(zlib.crc32(data, zlib.crc32(prefix)))


def decode_record_header(block: bytes, slot_size: int) -> RecordHeader | None:
    """The record header at the start of a slot; None for a slot with no record.

    Only the header's shape is checked here (magic, version, a length that fits
    the slot); whether the record is whole is for ``crc_matches`` with its data.
    """
    if len(block) < RECORD_HEADER_SIZE:
        return None
    magic, version, sequence, length, _ = _RECORD_HEADER.unpack_from(block)
    if magic != RECORD_MAGIC or version != FORMAT_VERSION:
        return None
    if RECORD_HEADER_SIZE + length > slot_size:
        return None
    (crc,) = _RECORD_CRC.unpack_from(block, _RECORD_HEADER.size)
    return RecordHeader(sequence, length, crc, bytes(block[: _RECORD_HEADER.size]))


def plan_slot_size(length: int) -> int:
    """The slot size for a record of ``length`` data bytes: a power of two >= 4 KiB."""
    need = RECORD_HEADER_SIZE + length
    return max(MIN_SLOT_SIZE, 1 << (need - 1).bit_length())


def newest_first(headers: tuple[RecordHeader | None, RecordHeader | None]) -> list[int]:
    """The slots that hold a record header, highest sequence first (ties: slot 0)."""
    present = [slot for slot in (0, 1) if headers[slot] is not None]
    return sorted(present, key=lambda slot: -headers[slot].sequence)  # type: ignore[union-attr]


def newest_plausible_length(
    header: FileHeader,
    headers: tuple[RecordHeader | None, RecordHeader | None],
    file_size: int,
) -> int | None:
    """The data length of the newest record whose header is whole and whose data
    ends within a file of ``file_size`` bytes; None when no record is such.

    What a listing reports without reading any record's data: a header may
    claim any length its slot holds, and only the file's real size bounds it.
    """
    for slot in newest_first(headers):
        record = headers[slot]
        assert record is not None
        end = header.slot_offset(slot) + RECORD_HEADER_SIZE + record.length
        if end <= file_size:
            return record.length
    return None


class Placement(enum.Enum):
    """Where a save puts its record."""

    IN_PLACE = "in_place"
    """overwrite a slot of the existing file: one write, one flush"""
    REBUILD = "rebuild"
    """write a new, larger file through the replace sequence"""


@attrs.frozen
class SlotChoice:
    """The decision of one slotted save, made from what it read."""

    placement: Placement
    slot: int
    sequence: int


def choose_slot(
    header: FileHeader,
    headers: tuple[RecordHeader | None, RecordHeader | None],
    newest_is_valid: bool,
    length: int,
) -> SlotChoice:
    """Which slot a save of ``length`` bytes overwrites, and with which sequence.

    Never the slot of the newest valid record: the newest header's slot when
    that record is torn (``newest_is_valid`` False: the other slot then holds
    the newest valid record), the other slot when it is whole, slot 0 in a file
    with no record. The sequence is one above every header's, so the new record
    is the newest whatever survives. A record that does not fit means a rebuild.
    """
    order = newest_first(headers)
    top = max((h.sequence for h in headers if h is not None), default=0)
    if top >= MAX_SEQUENCE:
        raise SlotsFormatError("record sequence numbers are exhausted")
    if not order:
        slot = 0
    elif newest_is_valid:
        slot = 1 - order[0]
    else:
        slot = order[0]
    placement = Placement.IN_PLACE if header.fits(length) else Placement.REBUILD
    return SlotChoice(placement, slot, top + 1)


def build_slots_file(
    data: bytes | bytearray | memoryview,
    sequence: int,
    previous: tuple[int, bytes] | None,
) -> bytes:
    """A whole new slots file: ``data`` in slot 0, the previous record in slot 1.

    Keeping the previous generation means ``load_previous()`` still works after
    the file was rebuilt. Every byte is written (zeroes included), so later
    in-place saves overwrite blocks that are already allocated. The records
    are copied once into one zeroed buffer of the file's size, which is then
    frozen: at most twice the file's size is held at any moment.
    """
    longest = max(len(data), len(previous[1]) if previous else 0)
    geometry = FileHeader(plan_slot_size(longest))
    image = bytearray(geometry.file_size)
    image[:FILE_HEADER_SIZE] = encode_file_header(geometry.slot_size)
    records = [(sequence, data)] + ([previous] if previous else [])
    for slot, (seq, body) in enumerate(records):
        at = geometry.slot_offset(slot)
        head = encode_record_header(seq, body)
        image[at : at + RECORD_HEADER_SIZE] = head
        image[at + RECORD_HEADER_SIZE : at + RECORD_HEADER_SIZE + len(body)] = body
    return bytes(image)
