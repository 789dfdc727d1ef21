//! What the value under an entry's key says about where its record is: all of it in the
//! value, or its head there and its body in a file of its own.

use bytes::Bytes;

/// The largest record kept whole in sled. sled holds what it was given in memory until its
/// page cache lets go, which for a few large values may be never: bodies above this size
/// go to files, so that storing an answer never leaves a copy of it in memory.
pub(super) const INLINE_MAX: usize = 64 * 1024;

/// The first byte of an entry's value: the whole record follows, or (`FILED | generation
/// (BE) | head`) the head of one whose body is the file of that generation. Values written
/// before the byte existed begin with the record's own magic: whole.
const WHOLE: u8 = 0;
const FILED: u8 = 1;

pub(super) enum Layout {
    Whole(Bytes),
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
        _ => Some(Layout::Whole(value)),
    }
}

pub(super) fn whole(head: &[u8], body: &[Bytes]) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + head.len() + body.iter().map(Bytes::len).sum::<usize>());
    value.push(WHOLE);
    value.extend_from_slice(head);
    body.iter().for_each(|p| value.extend_from_slice(p));
    value
}

pub(super) fn filed(generation: u64, head: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(9 + head.len());
    value.push(FILED);
    value.extend_from_slice(&generation.to_be_bytes());
    value.extend_from_slice(head);
    value
}
