//! The slotted layout's bytes and decisions: `sessionstore._slots_format` in Rust.
//!
//! Pure functions only, the same ones as the Python module (whose docstring
//! draws the file), so both backends write and accept exactly the same bytes.
//! The checksum is zlib's CRC-32 (`crc32fast`), over a record header's first 28
//! bytes and then the data. Integers are little-endian.

use std::fmt;

pub const FILE_MAGIC: &[u8; 8] = b"SESSLOTS";
pub const RECORD_MAGIC: &[u8; 4] = b"SREC";
pub const FORMAT_VERSION: u32 = 1;

/// Slots start on a 4 KiB boundary, so a record never shares a page, or a disk
/// sector, with the file header or with the other slot.
pub const FILE_HEADER_SIZE: u64 = 4096;
pub const MIN_SLOT_SIZE: u64 = 4096;

/// magic, version, header size, slot size; the header's CRC follows.
const FILE_HEADER_FIELDS: usize = 8 + 4 + 4 + 8;
/// magic, version, sequence, length, a zero word: what the record's CRC covers.
pub const RECORD_PREFIX_SIZE: usize = 4 + 4 + 8 + 8 + 4;
pub const RECORD_HEADER_SIZE: usize = RECORD_PREFIX_SIZE + 4;
/// The bytes a reader takes from the start of the file: the file header and
/// the first slot's record header, in one read.
pub const HEAD_READ_SIZE: usize = FILE_HEADER_SIZE as usize + RECORD_HEADER_SIZE;
pub const MAX_SEQUENCE: u64 = u64::MAX;
/// The largest size a file can have: the largest signed 64-bit file offset.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// Why a slots file cannot be read, or a save cannot go on; the text is the
/// Python module's, word for word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    Short,
    BadMagic,
    Version(u32),
    SlotSize(u64),
    SequencesExhausted,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short => f.write_str("slots file is shorter than its header"),
            Self::BadMagic => f.write_str("not a slots file (bad magic or header checksum)"),
            Self::Version(version) => write!(f, "unsupported slots format version {version}"),
            Self::SlotSize(size) => write!(f, "bad slot size {size}"),
            Self::SequencesExhausted => f.write_str("record sequence numbers are exhausted"),
        }
    }
}

fn u32_at(block: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(block: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"))
}

/// The fixed geometry of one slots file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub slot_size: u64,
}

impl FileHeader {
    // Saturating: a header can claim any slot size its checksum covers; an
    // offset past what a file can hold then fails the read (EINVAL), never panics.
    pub fn slot_offset(&self, slot: usize) -> u64 {
        FILE_HEADER_SIZE.saturating_add((slot as u64).saturating_mul(self.slot_size))
    }

    pub fn file_size(&self) -> u64 {
        self.slot_offset(2)
    }

    pub fn fits(&self, length: u64) -> bool {
        record_size(length).is_some_and(|size| size <= self.slot_size)
    }
}

/// Header and data of a record of `length` bytes; None past what a file can hold.
fn record_size(length: u64) -> Option<u64> {
    length.checked_add(RECORD_HEADER_SIZE as u64)
}

/// A record's header as read, before its data is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub sequence: u64,
    pub length: u64,
    pub crc: u32,
    /// the header bytes the CRC covers
    pub prefix: [u8; RECORD_PREFIX_SIZE],
}

impl RecordHeader {
    pub fn crc_matches(&self, data: &[u8]) -> bool {
        record_crc(&self.prefix, data) == self.crc
    }
}

fn record_crc(prefix: &[u8], data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(prefix);
    hasher.update(data);
    hasher.finalize()
}

/// The file header for slots of `slot_size` bytes, padded to its full size.
pub fn encode_file_header(slot_size: u64) -> Vec<u8> {
    let mut head = vec![0u8; FILE_HEADER_SIZE as usize];
    head[..8].copy_from_slice(FILE_MAGIC);
    head[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    head[12..16].copy_from_slice(&(FILE_HEADER_SIZE as u32).to_le_bytes());
    head[16..24].copy_from_slice(&slot_size.to_le_bytes());
    let crc = crc32fast::hash(&head[..FILE_HEADER_FIELDS]);
    head[FILE_HEADER_FIELDS..FILE_HEADER_FIELDS + 4].copy_from_slice(&crc.to_le_bytes());
    head
}

/// The geometry from the first bytes of a slots file.
pub fn decode_file_header(block: &[u8]) -> Result<FileHeader, FormatError> {
    if block.len() < FILE_HEADER_FIELDS + 4 {
        return Err(FormatError::Short);
    }
    let head = &block[..FILE_HEADER_FIELDS];
    if &head[..8] != FILE_MAGIC || crc32fast::hash(head) != u32_at(block, FILE_HEADER_FIELDS) {
        return Err(FormatError::BadMagic);
    }
    let (version, header_size, slot_size) = (u32_at(head, 8), u32_at(head, 12), u64_at(head, 16));
    if version != FORMAT_VERSION || u64::from(header_size) != FILE_HEADER_SIZE {
        return Err(FormatError::Version(version));
    }
    // A file of two such slots must fit a file offset (off_t), or no read can reach it.
    let too_big = slot_size > (MAX_FILE_SIZE - FILE_HEADER_SIZE) / 2;
    if slot_size < MIN_SLOT_SIZE || slot_size % MIN_SLOT_SIZE != 0 || too_big {
        return Err(FormatError::SlotSize(slot_size));
    }
    Ok(FileHeader { slot_size })
}

/// The header that makes `data` a record with `sequence`.
pub fn encode_record_header(sequence: u64, data: &[u8]) -> [u8; RECORD_HEADER_SIZE] {
    let mut header = [0u8; RECORD_HEADER_SIZE];
    header[..4].copy_from_slice(RECORD_MAGIC);
    header[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&sequence.to_le_bytes());
    header[16..24].copy_from_slice(&(data.len() as u64).to_le_bytes());
    let crc = record_crc(&header[..RECORD_PREFIX_SIZE], data);
    header[RECORD_PREFIX_SIZE..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The record header at the start of a slot; None for a slot with no record.
///
/// Only the header's shape is checked here (magic, version, a length that fits
/// the slot); whether the record is whole is for `crc_matches` with its data.
pub fn decode_record_header(block: &[u8], slot_size: u64) -> Option<RecordHeader> {
    if block.len() < RECORD_HEADER_SIZE {
        return None;
    }
    if &block[..4] != RECORD_MAGIC || u32_at(block, 4) != FORMAT_VERSION {
        return None;
    }
    let length = u64_at(block, 16);
    if !(FileHeader { slot_size }).fits(length) {
        return None;
    }
    Some(RecordHeader {
        sequence: u64_at(block, 8),
        length,
        crc: u32_at(block, RECORD_PREFIX_SIZE),
        prefix: block[..RECORD_PREFIX_SIZE]
            .try_into()
            .expect("prefix bytes"),
    })
}

/// The slot size for a record of `length` data bytes: a power of two >= 4 KiB.
pub fn plan_slot_size(length: u64) -> u64 {
    let need = record_size(length).and_then(u64::checked_next_power_of_two);
    need.unwrap_or(1 << 63).max(MIN_SLOT_SIZE)
}

/// The record headers of both slots, as read.
pub type Headers = [Option<RecordHeader>; 2];

/// The slots that hold a record header, highest sequence first (ties: slot 0).
pub fn newest_first(headers: &Headers) -> Vec<usize> {
    let mut present: Vec<usize> = (0..2).filter(|&slot| headers[slot].is_some()).collect();
    present.sort_by_key(|&slot| std::cmp::Reverse(headers[slot].map_or(0, |h| h.sequence)));
    present
}

/// Where a save puts its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// overwrite a slot of the existing file: one write, one flush
    InPlace,
    /// write a new, larger file through the replace sequence
    Rebuild,
}

/// The decision of one slotted save, made from what it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotChoice {
    pub placement: Placement,
    pub slot: usize,
    pub sequence: u64,
}

/// Which slot a save of `length` bytes overwrites, and with which sequence.
///
/// Never the slot of the newest valid record: the newest header's slot when
/// that record is torn (the other slot then holds the newest valid record), the
/// other slot when it is whole, slot 0 in a file with no record. The sequence
/// is one above every header's, so the new record is the newest whatever
/// survives. A record that does not fit means a rebuild.
pub fn choose_slot(
    header: FileHeader,
    headers: &Headers,
    newest_is_valid: bool,
    length: u64,
) -> Result<SlotChoice, FormatError> {
    let order = newest_first(headers);
    let top = headers
        .iter()
        .flatten()
        .map(|h| h.sequence)
        .max()
        .unwrap_or(0);
    if top == MAX_SEQUENCE {
        return Err(FormatError::SequencesExhausted);
    }
    let slot = match (order.first(), newest_is_valid) {
        (None, _) => 0,
        (Some(&newest), true) => 1 - newest,
        (Some(&newest), false) => newest,
    };
    let placement = if header.fits(length) {
        Placement::InPlace
    } else {
        Placement::Rebuild
    };
    Ok(SlotChoice {
        placement,
        slot,
        sequence: top + 1,
    })
}

/// A whole new slots file: `data` in slot 0, the previous record in slot 1.
///
/// Keeping the previous generation means `load_previous()` still works after
/// the file was rebuilt. Every byte is written (zeroes included), so later
/// in-place saves overwrite blocks that are already allocated. None when the
/// memory for the image cannot be had: the caller reports it, where a failed
/// allocation would end the process.
pub fn build_slots_file(
    data: &[u8],
    sequence: u64,
    previous: Option<(u64, &[u8])>,
) -> Option<Vec<u8>> {
    let longest = data.len().max(previous.map_or(0, |(_, body)| body.len()));
    let geometry = FileHeader {
        slot_size: plan_slot_size(longest as u64),
    };
    let size = usize::try_from(geometry.file_size()).ok()?;
    let mut image = Vec::new();
    image.try_reserve_exact(size).ok()?;
    image.extend_from_slice(&encode_file_header(geometry.slot_size));
    image.resize(size, 0);
    let records = std::iter::once((sequence, data)).chain(previous);
    for (slot, (seq, body)) in records.enumerate() {
        let at = geometry.slot_offset(slot) as usize;
        image[at..at + RECORD_HEADER_SIZE].copy_from_slice(&encode_record_header(seq, body));
        image[at + RECORD_HEADER_SIZE..at + RECORD_HEADER_SIZE + body.len()].copy_from_slice(body);
    }
    Some(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sequence: u64, length: u64) -> Option<RecordHeader> {
        Some(RecordHeader {
            sequence,
            length,
            crc: 0,
            prefix: [0; RECORD_PREFIX_SIZE],
        })
    }

    /// A small deterministic generator, so the tests need no extra crate.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn crc_is_zlibs_with_its_published_check_value() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        // Fed in two parts (prefix, then data) it is the CRC of the whole.
        assert_eq!(record_crc(b"1234", b"56789"), 0xCBF4_3926);
        assert_eq!(record_crc(b"", b""), 0);
    }

    #[test]
    fn a_record_header_has_the_python_layout() {
        let header = encode_record_header(7, b"abc");
        assert_eq!(&header[..4], b"SREC");
        assert_eq!(header[4..8], 1u32.to_le_bytes());
        assert_eq!(header[8..16], 7u64.to_le_bytes());
        assert_eq!(header[16..24], 3u64.to_le_bytes());
        assert_eq!(header[24..28], [0; 4]);
        let mut whole = header[..28].to_vec();
        whole.extend_from_slice(b"abc");
        assert_eq!(header[28..], crc32fast::hash(&whole).to_le_bytes());
    }

    #[test]
    fn records_round_trip_and_any_changed_byte_fails_the_check() {
        for (seed, len) in [(1, 0), (2, 1), (3, 100), (4, 4064), (5, 70_000)] {
            let data = noise(seed, len);
            let slot = plan_slot_size(len as u64);
            let header = decode_record_header(&encode_record_header(seed, &data), slot).unwrap();
            assert_eq!((header.sequence, header.length), (seed, len as u64));
            assert!(header.crc_matches(&data));
            for at in [0, len / 2, len.saturating_sub(1)] {
                if len > 0 {
                    let mut bad = data.clone();
                    bad[at] ^= 0x40;
                    assert!(!header.crc_matches(&bad));
                }
            }
        }
    }

    #[test]
    fn a_slot_with_no_record_reads_as_none() {
        assert_eq!(decode_record_header(&[0; RECORD_HEADER_SIZE], 4096), None);
        assert_eq!(decode_record_header(b"SREC", 4096), None);
        let mut other_version = encode_record_header(1, b"x");
        other_version[4] = 2;
        assert_eq!(decode_record_header(&other_version, 4096), None);
        // A length past the slot is no record, whatever its checksum.
        let big = encode_record_header(1, &[0; 4065]);
        assert_eq!(decode_record_header(&big, 4096), None);
        let mut huge = encode_record_header(1, b"");
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode_record_header(&huge, 4096), None);
    }

    #[test]
    fn the_file_header_round_trips_and_refuses_damage() {
        let head = encode_file_header(8192);
        assert_eq!(head.len(), 4096);
        assert_eq!(
            decode_file_header(&head),
            Ok(FileHeader { slot_size: 8192 })
        );
        assert_eq!(decode_file_header(&head[..27]), Err(FormatError::Short));
        let mut bad = head.clone();
        bad[20] ^= 1;
        assert_eq!(decode_file_header(&bad), Err(FormatError::BadMagic));
        assert_eq!(
            decode_file_header(&encode_file_header(5000)),
            Err(FormatError::SlotSize(5000))
        );
        let mut newer = head.clone();
        newer[8] = 2;
        let crc = crc32fast::hash(&newer[..24]);
        newer[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_file_header(&newer), Err(FormatError::Version(2)));
        // A CRC-valid header whose two slots would end past any file offset.
        for huge in [1 << 62, 1 << 63, u64::MAX - 4095] {
            assert_eq!(
                decode_file_header(&encode_file_header(huge)),
                Err(FormatError::SlotSize(huge))
            );
        }
        let largest = (MAX_FILE_SIZE - FILE_HEADER_SIZE) / 2 / MIN_SLOT_SIZE * MIN_SLOT_SIZE;
        assert_eq!(
            decode_file_header(&encode_file_header(largest)),
            Ok(FileHeader { slot_size: largest })
        );
        assert_eq!(
            FormatError::Version(2).to_string(),
            "unsupported slots format version 2"
        );
    }

    #[test]
    fn slot_sizes_are_powers_of_two_that_fit() {
        assert_eq!(plan_slot_size(0), 4096);
        assert_eq!(plan_slot_size(4064), 4096);
        assert_eq!(plan_slot_size(4065), 8192);
        assert_eq!(plan_slot_size(1 << 20), 2 << 20);
        for len in [0u64, 1, 4064, 4065, 65_536, 1 << 20, (1 << 30) + 7] {
            let size = plan_slot_size(len);
            assert!(size.is_power_of_two());
            assert!(FileHeader { slot_size: size }.fits(len));
            assert!(
                size == MIN_SLOT_SIZE
                    || !FileHeader {
                        slot_size: size / 2
                    }
                    .fits(len)
            );
        }
    }

    #[test]
    fn the_newest_valid_record_is_never_the_one_overwritten() {
        let geometry = FileHeader { slot_size: 4096 };
        let choose = |headers: &Headers, valid| choose_slot(geometry, headers, valid, 10).unwrap();
        assert_eq!(
            choose(&[None, None], false),
            SlotChoice {
                placement: Placement::InPlace,
                slot: 0,
                sequence: 1
            }
        );
        assert_eq!(choose(&[record(4, 1), record(5, 1)], true).slot, 0);
        assert_eq!(choose(&[record(4, 1), record(5, 1)], false).slot, 1);
        assert_eq!(choose(&[record(6, 1), None], true).slot, 1);
        assert_eq!(choose(&[record(6, 1), record(5, 1)], true).sequence, 7);
        // Ties: slot 0 counts as the newer.
        assert_eq!(newest_first(&[record(3, 1), record(3, 1)]), [0, 1]);
        assert_eq!(newest_first(&[None, record(3, 1)]), [1]);
        let big = choose_slot(geometry, &[None, None], false, 4065).unwrap();
        assert_eq!(big.placement, Placement::Rebuild);
        assert_eq!(
            choose_slot(geometry, &[record(u64::MAX, 1), None], true, 1),
            Err(FormatError::SequencesExhausted)
        );
    }

    #[test]
    fn a_rebuilt_file_holds_both_generations_in_full_slots() {
        let data = noise(9, 5000);
        let image = build_slots_file(&data, 8, Some((7, b"old"))).unwrap();
        let header = decode_file_header(&image).unwrap();
        assert_eq!(header.slot_size, 8192);
        assert_eq!(image.len() as u64, header.file_size());
        let at = |slot| header.slot_offset(slot) as usize;
        let first = decode_record_header(&image[at(0)..], header.slot_size).unwrap();
        let second = decode_record_header(&image[at(1)..], header.slot_size).unwrap();
        assert_eq!((first.sequence, second.sequence), (8, 7));
        let body = |slot, len: usize| &image[at(slot) + RECORD_HEADER_SIZE..][..len];
        assert!(first.crc_matches(body(0, 5000)));
        assert!(second.crc_matches(body(1, 3)));
        assert_eq!(body(0, 5000), &data[..]);
        let alone = build_slots_file(b"x", 1, None).unwrap();
        assert_eq!(alone.len(), 4096 * 3);
        assert_eq!(decode_record_header(&alone[8192..], 4096), None);
    }
}
