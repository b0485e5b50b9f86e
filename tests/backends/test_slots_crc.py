"""The native side's CRC-32 is zlib's: the records it writes check with
``zlib.crc32``, and it accepts and rejects exactly what zlib does."""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionstore import CorruptCheckpointError, _backend
from sessionstore._save_plan import plan_slotted_save
from sessionstore._slots_format import (
    FILE_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    build_slots_file,
    decode_file_header,
    encode_file_header,
)

_PLAN = plan_slotted_save()
_CHECK_INPUT = b"123456789"
_CHECK_VALUE = 0xCBF43926


@pytest.fixture(scope="module")
def native() -> _backend.Backend:
    return _backend.load_native()


def _records(image: bytes) -> list[tuple[bytes, int, bytes]]:
    """(header prefix, stored CRC, data) of each slot holding a record."""
    header = decode_file_header(image)
    found = []
    for slot in (0, 1):
        at = header.slot_offset(slot)
        head = image[at : at + RECORD_HEADER_SIZE]
        if head[:4] != b"SREC":
            continue
        length = int.from_bytes(head[16:24], "little")
        crc = int.from_bytes(head[28:32], "little")
        body = image[at + RECORD_HEADER_SIZE : at + RECORD_HEADER_SIZE + length]
        found.append((head[:28], crc, body))
    return found


def test_zlib_has_the_published_check_value() -> None:
    # The same value the Rust unit tests assert for crc32fast.
    assert zlib.crc32(_CHECK_INPUT) == _CHECK_VALUE


def test_the_native_file_header_checks_with_zlib(
    native: _backend.Backend, tmp_path: Path
) -> None:
    native.save_slotted(
        str(tmp_path), _CHECK_INPUT, _PLAN.in_place.codes, _PLAN.rebuild.codes
    )
    image = (tmp_path / "session.slots").read_bytes()
    assert image[:FILE_HEADER_SIZE] == encode_file_header(
        decode_file_header(image).slot_size
    )
    crc = int.from_bytes(image[24:28], "little")
    assert crc == zlib.crc32(image[:24])


@settings(max_examples=60, deadline=None)
@given(first=st.binary(max_size=9000), second=st.binary(max_size=9000))
def test_native_records_check_with_zlib(
    native: _backend.Backend, first: bytes, second: bytes
) -> None:
    """Both ways the native side writes a record (a rebuilt file, an in-place
    slot) store zlib's CRC-32 of the header prefix and the data."""
    with tempfile.TemporaryDirectory() as location:
        for data in (first, second):
            native.save_slotted(
                location, data, _PLAN.in_place.codes, _PLAN.rebuild.codes
            )
        image = Path(location, "session.slots").read_bytes()
    records = _records(image)
    assert sorted(body for _, _, body in records) == sorted([first, second])
    for prefix, crc, body in records:
        assert crc == zlib.crc32(body, zlib.crc32(prefix))
        assert crc == zlib.crc32(prefix + body)


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=9000),
    flip=st.integers(min_value=0, max_value=2**20),
    bit=st.integers(min_value=0, max_value=7),
)
def test_native_load_accepts_what_zlib_accepts_and_nothing_else(
    native: _backend.Backend, data: bytes, flip: int, bit: int
) -> None:
    image = bytearray(build_slots_file(data, 2, (1, b"older")))
    with tempfile.TemporaryDirectory() as location:
        path = os.path.join(location, "session.slots")
        Path(path).write_bytes(bytes(image))
        assert native.load_slots(path, False) == data
        at = FILE_HEADER_SIZE + RECORD_HEADER_SIZE + flip % len(data)
        image[at] ^= 1 << bit
        Path(path).write_bytes(bytes(image))
        # The damaged record fails zlib's check; the native load skips it too.
        assert native.load_slots(path, False) == b"older"
        assert native.load_slots(path, True) is None


def test_a_record_failing_the_check_alone_is_corrupt_on_native(
    native: _backend.Backend, tmp_path: Path
) -> None:
    image = bytearray(build_slots_file(_CHECK_INPUT, 1, None))
    image[FILE_HEADER_SIZE + 28] ^= 0x80  # the stored CRC itself
    path = tmp_path / "session.slots"
    path.write_bytes(bytes(image))
    with pytest.raises(CorruptCheckpointError):
        native.load_slots(str(path), False)
