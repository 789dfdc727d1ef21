//! How a large answer's record is laid out in the answers tree: the value under its
//! entry key says whether the record is whole or pieced, and pieces and their
//! unfinished-marks have keys of their own.

use bytes::Bytes;

use crate::cache::key::CacheKey;

pub(super) const PIECES: u8 = b'c';
pub(super) const PENDING: u8 = b'p';

/// The largest value written for an entry, and the size of a large body's pieces: small
/// enough that sled keeps them in its log segments and that writing one copies little.
pub(super) const PIECE: usize = 64 * 1024;

/// The first byte of an `e‖key` value: what follows is the whole record, or the head of a
/// record whose body is in pieces (`PIECED | generation (BE) | count (LE u32) | head`).
/// Values written before the byte existed begin with the record's own magic: whole.
pub(super) const WHOLE: u8 = 0;
pub(super) const PIECED: u8 = 1;

/// Where an entry's body is, as its `e‖key` value says.
pub(super) enum Layout {
    Whole(Bytes),
    Pieced {
        generation: u64,
        count: u32,
        head: Bytes,
    },
}

pub(super) fn layout_of(value: Bytes) -> Option<Layout> {
    match value.first() {
        Some(&WHOLE) => Some(Layout::Whole(value.slice(1..))),
        Some(&PIECED) => {
            let generation = u64::from_be_bytes(value.get(1..9)?.try_into().ok()?);
            let count = u32::from_le_bytes(value.get(9..13)?.try_into().ok()?);
            Some(Layout::Pieced {
                generation,
                count,
                head: value.slice(13..),
            })
        }
        _ => Some(Layout::Whole(value)),
    }
}

pub(super) fn piece_key(key: &CacheKey, generation: u64, index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(45);
    k.push(PIECES);
    k.extend_from_slice(&key.0);
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

pub(super) fn pending_key(key: &CacheKey, generation: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(PENDING);
    k.extend_from_slice(&key.0);
    k.extend_from_slice(&generation.to_be_bytes());
    k
}
