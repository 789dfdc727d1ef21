//! The sled store's layout of large answers: pieces written, read back in order, replaced,
//! removed, and cleaned up after a crash left them unfinished.

use bytes::Bytes;

use super::layout::PIECES;
use super::*;
use crate::cache::key::KeyParts;

fn summary(bytes: usize) -> Summary {
    Summary {
        bytes: bytes as u64,
        created_ms: 1,
        last_used: 1,
        status: 200,
        stream: false,
        method: "POST".into(),
        path: "/chat/completions".into(),
        model: None,
        parts: KeyParts::default(),
    }
}

/// `n` bytes in pieces of 1,000 (as a recording holds them), each byte its offset mod 251.
fn body(n: usize) -> Vec<Bytes> {
    let all: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    all.chunks(1000).map(Bytes::copy_from_slice).collect()
}

fn pieces_stored(s: &SledStore) -> usize {
    let mut n = 0;
    s.store
        .scan_prefix(Space::Answers, &[PIECES], |_, _| {
            n += 1;
            true
        })
        .unwrap();
    n
}

fn open(dir: &std::path::Path) -> SledStore {
    SledStore::new(crate::store::open_when_free(dir, 1 << 20))
}

#[test]
fn a_large_record_is_kept_in_pieces_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let key = CacheKey([7; 32]);
    let head = b"head of the record".to_vec();
    let b = body(3 * PIECE + 123);
    s.put(&key, &head, &b, &summary(3 * PIECE)).unwrap();
    assert_eq!(pieces_stored(&s), 4);
    let got = s.lookup(&key).unwrap().unwrap();
    assert_eq!(got.len(), 5, "the head, then four pieces");
    assert_eq!(&got[0][..], &head[..]);
    assert!(got[1..].iter().all(|p| p.len() <= PIECE));
    assert_eq!(got[1..].concat(), b.concat());

    // Replaced by a small record: the old pieces go with it.
    s.put(&key, &head, &body(10), &summary(10)).unwrap();
    assert_eq!(pieces_stored(&s), 0);
    let got = s.lookup(&key).unwrap().unwrap();
    assert_eq!(got.concat(), [&head[..], &body(10).concat()].concat());

    s.put(&key, &head, &b, &summary(3 * PIECE)).unwrap();
    assert_eq!(pieces_stored(&s), 4);
    assert!(s.remove(&key).unwrap().is_some());
    assert_eq!(pieces_stored(&s), 0);
    assert_eq!(s.lookup(&key).unwrap(), None);
}

#[test]
fn a_record_missing_a_piece_is_not_found_rather_than_served_short() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let key = CacheKey([8; 32]);
    s.put(&key, b"h", &body(2 * PIECE), &summary(2 * PIECE))
        .unwrap();
    let Some(Layout::Pieced { generation, .. }) = s.layout(&key).unwrap() else {
        panic!("a large record is kept in pieces");
    };
    s.store
        .apply(
            Space::Answers,
            vec![Op::Remove(piece_key(&key, generation, 1))],
        )
        .unwrap();
    assert_eq!(s.lookup(&key).unwrap(), None);
}

#[test]
fn pieces_a_crash_left_unfinished_are_removed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey([9; 32]);
    {
        let s = open(dir.path());
        s.put(&key, b"kept", &body(2 * PIECE), &summary(2 * PIECE))
            .unwrap();
        // Pieces of a second entry written, the batch that would show it never made.
        let other = CacheKey([10; 32]);
        s.write_pieces(&other, 99, &body(3 * PIECE), 3).unwrap();
        assert_eq!(pieces_stored(&s), 5);
        s.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(
        pieces_stored(&s),
        2,
        "only the finished entry's pieces remain"
    );
    let got = s.lookup(&key).unwrap().unwrap();
    assert_eq!(got[1..].concat(), body(2 * PIECE).concat());
}
