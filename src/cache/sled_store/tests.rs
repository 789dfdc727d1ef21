//! The sled store's layout of answers: small ones compressed when that pays, large ones
//! with bodies in files of their own, read back in pieces, replaced, removed, and deleted
//! at start when no entry names them.

use bytes::Bytes;

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

fn files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("bodies")).map_or(0, |d| d.count())
}

fn open(dir: &std::path::Path) -> SledStore {
    let store = crate::store::open_when_free(&dir.join("store"), 1 << 20);
    SledStore::new(store, dir.join("bodies"))
}

#[test]
fn a_large_body_is_kept_in_a_file_and_read_back_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let key = CacheKey([7; 32]);
    let head = b"head of the record".to_vec();
    let b = body(3 * INLINE_MAX + 123);
    s.put(&key, &head, &b, &summary(3 * INLINE_MAX), true)
        .unwrap();
    assert_eq!(files(dir.path()), 1);
    let got = s.lookup(&key).unwrap().unwrap();
    assert_eq!(&got[0][..], &head[..]);
    assert!(got.len() > 2, "the body in pieces");
    assert!(got[1..].iter().all(|p| p.len() <= 64 * 1024));
    assert_eq!(got[1..].concat(), b.concat());
    assert!(s.size_on_disk() >= b.concat().len() as u64);

    // Replaced by a small record: the old file goes with it.
    s.put(&key, &head, &body(10), &summary(10), true).unwrap();
    assert_eq!(files(dir.path()), 0);
    let got = s.lookup(&key).unwrap().unwrap();
    assert_eq!(got.concat(), [&head[..], &body(10).concat()].concat());

    s.put(&key, &head, &b, &summary(3 * INLINE_MAX), true)
        .unwrap();
    s.put(&key, &head, &b, &summary(3 * INLINE_MAX), true)
        .unwrap();
    assert_eq!(files(dir.path()), 1, "a replaced body's file is deleted");
    assert!(s.remove(&key, Gone::Purged, 5).unwrap().is_some());
    assert_eq!(
        s.gone(&key).unwrap(),
        Some((Gone::Purged, 5)),
        "noted with it"
    );
    assert_eq!(files(dir.path()), 0);
    assert_eq!(s.lookup(&key).unwrap(), None);
}

#[test]
fn an_entry_whose_body_file_is_lost_reads_as_its_head_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let key = CacheKey([8; 32]);
    s.put(
        &key,
        b"h",
        &body(2 * INLINE_MAX),
        &summary(2 * INLINE_MAX),
        true,
    )
    .unwrap();
    for f in std::fs::read_dir(dir.path().join("bodies")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    // The head alone fails the entry's checksum: the cache drops it as damaged.
    assert_eq!(
        s.lookup(&key).unwrap(),
        Some(vec![Bytes::from_static(b"h")])
    );
}

#[test]
fn body_files_no_entry_names_are_deleted_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey([9; 32]);
    {
        let s = open(dir.path());
        s.put(
            &key,
            b"kept",
            &body(2 * INLINE_MAX),
            &summary(2 * INLINE_MAX),
            true,
        )
        .unwrap();
        // A body written, the batch that would name it never made (a crash between).
        s.bodies
            .write(&CacheKey([10; 32]), 99, &body(3 * INLINE_MAX))
            .unwrap();
        // And an earlier generation of the kept entry's own body.
        s.bodies.write(&key, u64::MAX, &body(10)).unwrap();
        assert_eq!(files(dir.path()), 3);
        s.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(files(dir.path()), 1, "only the named body remains");
    let got = s.lookup(&key).unwrap().unwrap();
    assert_eq!(got[1..].concat(), body(2 * INLINE_MAX).concat());
}

fn stored_value(s: &SledStore, key: &CacheKey) -> Bytes {
    s.store
        .get(Space::Answers, &record_key(ENTRY, key))
        .unwrap()
        .unwrap()
}

#[test]
fn a_small_record_is_kept_compressed_and_read_back_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let key = CacheKey([11; 32]);
    let answer = r#"{"choices":[{"message":{"content":"The capital of France is Paris."}}]}"#;
    let b: Vec<Bytes> = (0..20).map(|_| Bytes::from(answer)).collect();
    let record = [&b"head"[..], &b.concat()].concat();
    s.put(&key, b"head", &b, &summary(record.len()), true)
        .unwrap();
    let value = stored_value(&s, &key);
    assert!(
        value.len() < record.len() / 2,
        "kept in {} bytes for a record of {}",
        value.len(),
        record.len()
    );
    assert_eq!(s.lookup(&key).unwrap().unwrap().concat(), record);
}

#[test]
fn a_record_that_does_not_compress_is_kept_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let key = CacheKey([12; 32]);
    let mut noise = vec![0u8; 4000];
    blake3::Hasher::new()
        .update(b"seed")
        .finalize_xof()
        .fill(&mut noise);
    let b = vec![Bytes::from(noise.clone())];
    s.put(&key, b"h", &b, &summary(4001), true).unwrap();
    let value = stored_value(&s, &key);
    assert_eq!(&value[1..], &[&b"h"[..], &noise[..]].concat()[..]);
    assert_eq!(s.lookup(&key).unwrap().unwrap().concat()[1..], noise[..]);
}

#[test]
fn a_damaged_compressed_record_reads_back_empty_and_fails_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let key = CacheKey([13; 32]);
    let b = vec![Bytes::from(vec![b'a'; 3000])];
    s.put(&key, b"h", &b, &summary(3001), true).unwrap();
    let mut value = stored_value(&s, &key).to_vec();
    // Cut short: a frame that cannot give back the record's bytes.
    value.truncate(value.len() - 4);
    s.store
        .put(Space::Answers, &record_key(ENTRY, &key), &value)
        .unwrap();
    assert_eq!(s.lookup(&key).unwrap(), Some(vec![Bytes::new()]));
    // A length no record kept in sled has is damage too, not an allocation of it.
    value[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
    s.store
        .put(Space::Answers, &record_key(ENTRY, &key), &value)
        .unwrap();
    assert_eq!(s.lookup(&key).unwrap(), Some(vec![Bytes::new()]));
    assert!(crate::cache::entry::Entry::decode(vec![Bytes::new()]).is_err());
}

#[test]
fn the_order_of_use_index_of_earlier_versions_is_deleted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let key = CacheKey([7; 32]);
    s.put(&key, b"record", &[], &summary(6), true).unwrap();
    // What an earlier version kept beside each entry: `u‖last use (BE)‖key` → its size.
    let mut old = vec![OLD_USE_INDEX];
    old.extend_from_slice(&1u64.to_be_bytes());
    old.extend_from_slice(&key.0);
    s.store
        .put(Space::Answers, &old, &6u64.to_le_bytes())
        .unwrap();
    let store = s.store.clone();
    drop(s);
    let s = SledStore::new(store, dir.path().join("bodies"));
    let mut left = 0;
    s.store
        .scan_prefix(Space::Answers, &[OLD_USE_INDEX], |_, _| {
            left += 1;
            true
        })
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(&s.lookup(&key).unwrap().unwrap()[0][..], b"record");
}
