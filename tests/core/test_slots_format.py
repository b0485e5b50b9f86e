"""The slotted layout's bytes and decisions: pure functions, checked by properties."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionstore._slots_format import (
    FILE_HEADER_SIZE,
    MIN_SLOT_SIZE,
    RECORD_HEADER_SIZE,
    FileHeader,
    Placement,
    RecordHeader,
    SlotsFormatError,
    build_slots_file,
    choose_slot,
    decode_file_header,
    decode_record_header,
    encode_file_header,
    encode_record_header,
    newest_first,
    plan_slot_size,
)

sequences = st.integers(min_value=1, max_value=2**63)
payloads = st.binary(max_size=10_000)


def test_the_checksum_is_zlibs_crc32_with_its_published_check_value() -> None:
    assert zlib.crc32(b"123456789") == 0xCBF43926
    header = encode_record_header(7, b"123456789")
    record = decode_record_header(header, MIN_SLOT_SIZE)
    assert record is not None
    assert record.crc == zlib.crc32(header[:28] + b"123456789")


def test_a_record_header_has_a_fixed_layout() -> None:
    header = encode_record_header(1, b"abc")
    assert len(header) == RECORD_HEADER_SIZE == 32
    assert header[:4] == b"SREC"
    assert header[4:8] == (1).to_bytes(4, "little")
    assert header[8:16] == (1).to_bytes(8, "little")
    assert header[16:24] == (3).to_bytes(8, "little")


@given(sequences, payloads)
def test_a_record_round_trips_and_checks(sequence: int, data: bytes) -> None:
    slot = plan_slot_size(len(data))
    record = decode_record_header(encode_record_header(sequence, data), slot)
    assert record is not None
    assert (record.sequence, record.length) == (sequence, len(data))
    assert record.crc_matches(data)


@given(sequences, payloads.filter(bool), st.data())
def test_any_changed_byte_fails_the_check(
    sequence: int, data: bytes, draw: st.DataObject
) -> None:
    record = decode_record_header(encode_record_header(sequence, data), 2**40)
    assert record is not None
    at = draw.draw(st.integers(0, len(data) - 1))
    flip = draw.draw(st.integers(1, 255))
    torn = data[:at] + bytes([data[at] ^ flip]) + data[at + 1 :]
    assert not record.crc_matches(torn)


@given(sequences, payloads, st.data())
def test_a_record_torn_at_a_sector_never_passes(
    sequence: int, data: bytes, draw: st.DataObject
) -> None:
    """A power cut persists some 512-byte sectors of the new record, not others."""
    old = encode_record_header(sequence - 1 if sequence > 1 else 2, b"o" * len(data))
    old += b"o" * len(data)
    new = encode_record_header(sequence, data) + data
    pieces = range(0, len(new), 512)
    keep = draw.draw(
        st.lists(st.booleans(), min_size=len(pieces), max_size=len(pieces))
    )
    mixed = b"".join(
        (new if kept else old)[at : at + 512]
        for at, kept in zip(pieces, keep, strict=True)
    )
    record = decode_record_header(mixed, 2**40)
    if record is not None:
        body = mixed[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + record.length]
        if record.crc_matches(body):
            assert mixed in (new, old)


def test_an_empty_slot_has_no_record() -> None:
    assert decode_record_header(bytes(RECORD_HEADER_SIZE), MIN_SLOT_SIZE) is None


def test_a_length_beyond_the_slot_is_no_record() -> None:
    header = encode_record_header(1, b"x" * MIN_SLOT_SIZE)
    assert decode_record_header(header, MIN_SLOT_SIZE) is None


@given(st.integers(min_value=0, max_value=2**34))
def test_slot_size_is_a_power_of_two_that_fits(length: int) -> None:
    size = plan_slot_size(length)
    assert size >= MIN_SLOT_SIZE
    assert size & (size - 1) == 0
    assert FileHeader(size).fits(length)
    assert size == MIN_SLOT_SIZE or not FileHeader(size // 2).fits(length)


def test_the_file_header_round_trips_and_refuses_garbage() -> None:
    block = encode_file_header(8192)
    assert len(block) == FILE_HEADER_SIZE
    assert decode_file_header(block) == FileHeader(8192)
    with pytest.raises(SlotsFormatError):
        decode_file_header(b"x" + block[1:])
    with pytest.raises(SlotsFormatError):
        decode_file_header(block[:10])
    with pytest.raises(SlotsFormatError):
        decode_file_header(bytes(FILE_HEADER_SIZE))


def _header(sequence: int) -> RecordHeader:
    record = decode_record_header(encode_record_header(sequence, b""), MIN_SLOT_SIZE)
    assert record is not None
    return record


optional_headers = st.one_of(st.none(), sequences.map(_header))


@given(optional_headers, optional_headers, st.booleans(), st.integers(0, 10_000))
def test_a_save_never_overwrites_the_newest_valid_record(
    first: RecordHeader | None,
    second: RecordHeader | None,
    newest_is_valid: bool,
    length: int,
) -> None:
    headers = (first, second)
    choice = choose_slot(FileHeader(8192), headers, newest_is_valid, length)
    order = newest_first(headers)
    if order and newest_is_valid:
        assert choice.slot != order[0]
    assert choice.sequence > max((h.sequence for h in headers if h), default=0)
    assert (choice.placement is Placement.IN_PLACE) == FileHeader(8192).fits(length)


def test_newest_first_orders_by_sequence() -> None:
    assert newest_first((_header(3), _header(5))) == [1, 0]
    assert newest_first((_header(5), None)) == [0]
    assert newest_first((None, None)) == []


def test_exhausted_sequence_numbers_are_an_error() -> None:
    with pytest.raises(SlotsFormatError):
        choose_slot(FileHeader(8192), (_header(2**64 - 1), None), True, 1)


@given(payloads, sequences, st.one_of(st.none(), st.tuples(sequences, payloads)))
def test_a_built_file_holds_both_generations(
    data: bytes, sequence: int, previous: tuple[int, bytes] | None
) -> None:
    image = build_slots_file(data, sequence, previous)
    header = decode_file_header(image)
    assert len(image) == header.file_size
    found = []
    for slot in (0, 1):
        at = header.slot_offset(slot)
        record = decode_record_header(image[at:], header.slot_size)
        if record is None:
            continue
        body = image[at + RECORD_HEADER_SIZE : at + RECORD_HEADER_SIZE + record.length]
        assert record.crc_matches(body)
        found.append((record.sequence, body))
    assert found[0] == (sequence, data)
    assert found[1:] == ([previous] if previous else [])
