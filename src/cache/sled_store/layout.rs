//! What the value under an entry's key says about where its record is and in what form:
//! all of it in the value, as it is or compressed, or its head there and its body in a
//! file of its own.

use std::cell::RefCell;

use bytes::Bytes;

/// The largest record kept in sled. sled holds what it was given in memory until its
/// page cache lets go, which for a few large values may be never: bodies above this size
/// go to files, so that storing an answer never leaves a copy of it in memory.
pub(super) const INLINE_MAX: usize = 64 * 1024;

/// zstd's fastest level: on answers of a few hundred bytes to a few KiB, higher levels
/// save next to nothing more.
const LEVEL: i32 = 1;

/// The first byte of an entry's value: the whole record follows, as it is (`WHOLE`) or
/// compressed (`PACKED | record length (BE u32) | zstd frame`), or (`FILED | generation
/// (BE) | head`) the head of one whose body is the file of that generation. Values written
/// before the byte existed begin with the record's own magic (`C`): whole.
const WHOLE: u8 = 0;
const FILED: u8 = 1;
const PACKED: u8 = 2;

pub(super) enum Layout {
    Whole(Bytes),
    Packed { len: usize, frame: Bytes },
    Filed { generation: u64, head: Bytes },
}

pub(super) fn layout_of(value: Bytes) -> Option<Layout> {
    match value.first() {
        Some(&WHOLE) => Some(Layout::Whole(value.slice(1..))),
        Some(&FILED) => {
            let generation = u64::from_be_bytes(value.get(1..9)?.try_into().ok()?);
            Some(Layout::Filed {
                generation,
                head: value.slice(9..),
            })
        }
        Some(&PACKED) => {
            let len = u32::from_be_bytes(value.get(1..5)?.try_into().ok()?) as usize;
            Some(Layout::Packed {
                len,
                frame: value.slice(5..),
            })
        }
        _ => Some(Layout::Whole(value)),
    }
}

thread_local! {
    // A context made once per thread (the cache's writer and the few blocking threads that
    // read the store): making one for each value costs more than compressing it.
    static COMPRESSOR: RefCell<Option<zstd::block::Compressor>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::block::Decompressor>> = const { RefCell::new(None) };
}

/// The value that keeps `head` and `body` in sled: compressed when that makes it smaller.
pub(super) fn inline(head: &[u8], body: &[Bytes]) -> Vec<u8> {
    // Laid out as the uncompressed value, so that it is one if compressing does not pay.
    let mut whole = Vec::with_capacity(1 + head.len() + body.iter().map(Bytes::len).sum::<usize>());
    whole.push(WHOLE);
    whole.extend_from_slice(head);
    body.iter().for_each(|p| whole.extend_from_slice(p));
    let record = &whole[1..];
    let frame = COMPRESSOR.with_borrow_mut(|c| {
        c.get_or_insert_with(zstd::block::Compressor::new)
            .compress(record, LEVEL)
    });
    match (frame, u32::try_from(record.len())) {
        (Ok(frame), Ok(len)) if frame.len() + 5 < whole.len() => {
            let mut value = Vec::with_capacity(5 + frame.len());
            value.push(PACKED);
            value.extend_from_slice(&len.to_be_bytes());
            value.extend_from_slice(&frame);
            value
        }
        // Incompressible (or, never for a record this small, a failed compression): as it is.
        _ => whole,
    }
}

/// The record a packed value holds. A frame that does not give back `len` bytes, or a
/// `len` no record kept in sled has, is damage: the empty record returned fails its
/// checksum, and the entry is dropped.
pub(super) fn unpack(len: usize, frame: &[u8]) -> Bytes {
    if len > INLINE_MAX {
        return Bytes::new();
    }
    let record = DECOMPRESSOR.with_borrow_mut(|d| {
        d.get_or_insert_with(zstd::block::Decompressor::new)
            .decompress(frame, len)
    });
    match record {
        Ok(r) if r.len() == len => Bytes::from(r),
        _ => Bytes::new(),
    }
}

pub(super) fn filed(generation: u64, head: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(9 + head.len());
    value.push(FILED);
    value.extend_from_slice(&generation.to_be_bytes());
    value.extend_from_slice(head);
    value
}
