//! Tests of the cache over a real sled store: lookups, ages, damage, eviction, purges,
//! reopening, and that lookups never wait for the writer.

use std::time::Duration;

use super::*;
use crate::cache::entry::tests::sample;
use crate::cache::key::{cache_key, KeyParts};
use crate::cache::sled_store::SledStore;

pub(crate) struct TestCache {
    pub cache: Cache,
    /// A second handle on the same storage, to write behind the cache's back.
    pub raw: SledStore,
    pub dir: tempfile::TempDir,
}

pub(crate) fn open(max_bytes: u64) -> TestCache {
    reopen(tempfile::tempdir().unwrap(), max_bytes)
}

pub(crate) fn reopen(dir: tempfile::TempDir, max_bytes: u64) -> TestCache {
    let store = crate::store::open_when_free(&dir.path().join("store"), 1 << 20);
    let limits = Limits {
        max_bytes,
        max_age: Duration::from_secs(3600),
        hot_bytes: 1 << 20,
        pending_bytes: 1 << 20,
    };
    let bodies = dir.path().join("bodies");
    let cache = Cache::open(
        Box::new(SledStore::new(store.clone(), bodies.clone())),
        limits,
    )
    .unwrap();
    TestCache {
        cache,
        raw: SledStore::new(store, bodies),
        dir,
    }
}

impl TestCache {
    /// Closes the cache (its writer flushes) and opens it again on the same directory.
    fn restart(self, max_bytes: u64) -> TestCache {
        let TestCache { cache, raw, dir } = self;
        let writer = lock(&cache.shared.thread).take().unwrap();
        drop((cache, raw));
        // The writer holds the store until it has seen the last handle go, then flushes.
        writer.join().unwrap();
        reopen(dir, max_bytes)
    }
}

/// A sample entry created now.
fn fresh() -> Entry {
    let mut e = sample(false);
    e.meta.created_ms = now_ms();
    e
}

fn record_len(e: &Entry) -> u64 {
    e.encode().len() as u64
}

fn key(i: usize) -> CacheKey {
    cache_key("POST", "/x", "p", format!("{i}").as_bytes())
}

fn lookup(c: &Cache, k: CacheKey) -> Lookup {
    c.get(k, None).unwrap().0
}

#[test]
fn put_get_and_counts() {
    let t = open(1 << 30);
    let c = &t.cache;
    let e = fresh();
    c.put(key(1), KeyParts::default(), e.clone()).unwrap();
    let (l, got) = c.get(key(1), None).unwrap();
    assert_eq!(l, Lookup::Fresh);
    assert_eq!(got.unwrap().body_bytes(), e.body_bytes());
    assert_eq!(lookup(c, key(2)), Lookup::Missing);
    assert_eq!(c.stats().entries, 1);
    c.put(key(1), KeyParts::default(), e.clone()).unwrap();
    assert_eq!(c.stats().entries, 1, "replacing does not double count");
    assert_eq!(c.stats().bytes, record_len(&e));
    let store = c.stats().store;
    assert!(
        store.contains("store (sled; answers over 64 KiB in "),
        "{store}"
    );
    assert!(store.ends_with("bodies)"), "{store}");
}

#[test]
fn a_handed_over_answer_is_served_before_it_is_stored() {
    // Every store is over this limit, so the writer goes on to an eviction after each.
    let t = open(1);
    let c = &t.cache;
    let e = Arc::new(fresh());
    let (arrived, release) = c.shared.evict_gate.arm();
    assert!(c.store(key(1), KeyParts::default(), e.clone()));
    arrived.recv().unwrap();
    // The writer is held: key(2) waits for it, and is served from memory meanwhile.
    assert!(c.store(key(2), KeyParts::default(), e.clone()));
    let got = c
        .get_now(key(2), None)
        .expect("served while waiting to be stored");
    assert!(Arc::ptr_eq(&got, &e));
    drop(release);
    c.flush().unwrap();
    assert!(lock(&c.shared.pending).entries.is_empty());
    assert_eq!(lock(&c.shared.pending).bytes, 0);
}

#[test]
fn list_gives_the_most_recently_used_first_up_to_the_limit() {
    let t = open(1 << 30);
    let c = &t.cache;
    for i in 0..5 {
        c.put(key(i), KeyParts::default(), fresh()).unwrap();
    }
    // Used a second later than they were stored: key(1) and key(3) come first.
    let later = now_ms() + 1_000;
    t.raw
        .touch(&[(key(1), later), (key(3), later + 1)])
        .unwrap();
    let listed =
        |limit| -> Vec<String> { c.list(limit).unwrap().into_iter().map(|s| s.key).collect() };
    assert_eq!(listed(2), [key(3).to_hex(), key(1).to_hex()]);
    assert_eq!(listed(10).len(), 5);
    assert!(listed(0).is_empty());
}

#[test]
fn damaged_entry_is_dropped_not_served() {
    let t = open(1 << 30);
    let c = &t.cache;
    let e = fresh();
    c.put(key(1), KeyParts::default(), e.clone()).unwrap();
    let mut raw = e.encode();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    t.raw
        .put(
            &key(1),
            &raw,
            &[],
            &e.summary(raw.len(), now_ms(), KeyParts::default()),
            true,
        )
        .unwrap();
    assert_eq!(lookup(c, key(1)), Lookup::Corrupt);
    c.flush().unwrap();
    assert_eq!(lookup(c, key(1)), Lookup::Missing, "dropped by the writer");
    assert_eq!(c.stats().dropped_corrupt, 1);
}

#[test]
fn age_limits_apply_and_expired_entries_are_dropped() {
    let t = open(1 << 30);
    let c = &t.cache;
    let mut e = sample(false);
    e.meta.created_ms = now_ms() - 10_000;
    c.put(key(1), KeyParts::default(), e.clone()).unwrap();
    assert_eq!(
        c.get(key(1), Some(Duration::from_secs(5))).unwrap().0,
        Lookup::Stale
    );
    assert_eq!(
        c.get(key(1), Some(Duration::from_secs(60))).unwrap().0,
        Lookup::Fresh
    );
    e.meta.created_ms = now_ms() - 7_200_000;
    c.put(key(2), KeyParts::default(), e).unwrap();
    assert_eq!(lookup(c, key(2)), Lookup::Stale, "past cache.max_age");
    c.flush().unwrap();
    assert_eq!(
        lookup(c, key(2)),
        Lookup::Missing,
        "removed once found expired"
    );
    assert_eq!(c.stats().entries, 1);
}

#[test]
fn eviction_keeps_under_limit_and_drops_least_recent() {
    let per = record_len(&fresh());
    let t = open(per * 10);
    let c = &t.cache;
    for i in 0..30 {
        c.put(key(i), KeyParts::default(), fresh()).unwrap();
        // Each store is followed by an eviction, once the writer is done with it.
        c.flush().unwrap();
        assert!(c.stats().bytes <= per * 10, "over the limit after put {i}");
        if i == 5 {
            // Used later than everything stored so far: it outlives its neighbours.
            t.raw.touch(&[(key(0), now_ms() + 60_000)]).unwrap();
        }
    }
    assert!(c.stats().evictions >= 20);
    assert_eq!(lookup(c, key(29)), Lookup::Fresh, "newest kept");
    assert_eq!(lookup(c, key(0)), Lookup::Fresh, "recently used kept");
    assert_eq!(
        lookup(c, key(1)),
        Lookup::Missing,
        "least recently used evicted"
    );
}

#[test]
fn eviction_of_a_cache_larger_than_its_sample_takes_the_least_recently_used() {
    // 1,000 entries, 250 of them used later than the rest; then room for 833 at most, so
    // that eviction (down to 90%: 750) removes 250, every one of them from the 750 unused.
    // Each sample of 64 then holds two thirds unused entries at least, and only its 8
    // least recently used go.
    let per = record_len(&fresh());
    let t = open(per * 2_000);
    for i in 0..1_000 {
        t.cache.put(key(i), KeyParts::default(), fresh()).unwrap();
    }
    let later = now_ms() + 60_000;
    let used: Vec<_> = (0..1_000).step_by(4).map(|i| (key(i), later)).collect();
    t.raw.touch(&used).unwrap();
    let t = t.restart(per * 833 + per / 2);
    t.cache.flush().unwrap();
    t.cache.flush().unwrap();
    let c = &t.cache;
    assert!(c.stats().bytes <= per * 750, "{:?}", c.stats());
    assert!(c.stats().evictions >= 250, "{:?}", c.stats());
    for i in (0..1_000).step_by(4) {
        assert_eq!(lookup(c, key(i)), Lookup::Fresh, "used entry {i} evicted");
    }
}

#[test]
fn the_store_is_not_asked_for_keys_it_certainly_lacks() {
    let t = open(1 << 30);
    // More than the filter is first built for: it is built anew on the way.
    for i in 0..200 {
        t.cache.put(key(i), KeyParts::default(), fresh()).unwrap();
    }
    assert!((0..200).all(|i| t.cache.may_be_stored(&key(i))));
    let t = t.restart(1 << 30);
    let c = &t.cache;
    // The writer learns the stored keys before it takes its first job.
    c.flush().unwrap();
    assert!(
        (0..200).all(|i| c.may_be_stored(&key(i))),
        "a stored key missed"
    );
    let taken = (200..2_200).filter(|&i| c.may_be_stored(&key(i))).count();
    assert!(
        taken < 100,
        "{taken} of 2,000 absent keys taken for stored ones"
    );
    let absent = (200..2_200).find(|&i| !c.may_be_stored(&key(i))).unwrap();
    assert_eq!(lookup(c, key(absent)), Lookup::Missing);
    c.put(key(absent), KeyParts::default(), fresh()).unwrap();
    assert!(c.may_be_stored(&key(absent)));
    assert_eq!(lookup(c, key(absent)), Lookup::Fresh);
}

#[test]
fn hits_are_answered_while_an_eviction_is_held() {
    let per = record_len(&fresh());
    let t = open(per * 4);
    let c = &t.cache;
    for i in 0..3 {
        c.put(key(i), KeyParts::default(), fresh()).unwrap();
    }
    // Warm key(0) into memory and leave key(1), key(2) to be read from the store.
    assert_eq!(lookup(c, key(0)), Lookup::Fresh);
    let (arrived, release) = c.shared.evict_gate.arm();
    for i in 3..6 {
        assert!(c.store(key(i), KeyParts::default(), Arc::new(fresh())));
    }
    // The writer is now inside an eviction, and stays there until released.
    arrived.recv().unwrap();
    let hits: Vec<_> = (0..8)
        .map(|n| {
            let c = c.clone();
            std::thread::spawn(move || (0..50).all(|_| lookup(&c, key(n % 3)) == Lookup::Fresh))
        })
        .collect();
    for h in hits {
        assert!(
            h.join().unwrap(),
            "a hit failed while the eviction was held"
        );
    }
    assert_eq!(c.stats().evictions, 0, "the eviction had not run yet");
    drop(release);
    c.flush().unwrap();
    assert!(c.stats().evictions > 0);
    assert!(c.stats().bytes <= per * 4);
}

#[test]
fn purge_by_model_and_all() {
    let t = open(1 << 30);
    let c = &t.cache;
    let mut e = fresh();
    c.put(key(1), KeyParts::default(), e.clone()).unwrap();
    e.meta.model = Some("other".into());
    c.put(key(2), KeyParts::default(), e).unwrap();
    let by_model = Purge {
        model: Some("other".into()),
        ..Default::default()
    };
    assert_eq!(c.purge(&by_model).unwrap(), 1);
    assert_eq!(lookup(c, key(1)), Lookup::Fresh);
    assert_eq!(
        c.purge(&Purge::default()).unwrap(),
        0,
        "no filter purges nothing"
    );
    let all = Purge {
        all: true,
        ..Default::default()
    };
    assert_eq!(c.purge(&all).unwrap(), 1);
    assert_eq!(c.stats().entries, 0);
    assert_eq!(c.stats().bytes, 0);
}

#[test]
fn a_reopened_cache_finds_its_entries_and_the_noted_uses() {
    let t = open(1 << 30);
    for i in 0..3 {
        t.cache.put(key(i), KeyParts::default(), fresh()).unwrap();
    }
    t.cache.shared.note_use(key(0));
    let t = t.restart(1 << 30);
    let c = &t.cache;
    assert_eq!(c.stats().entries, 3);
    assert_eq!(c.stats().bytes, 3 * record_len(&fresh()));
    assert_eq!(
        c.list(1).unwrap()[0].key,
        key(0).to_hex(),
        "its use was kept"
    );
    for i in 0..3 {
        assert_eq!(lookup(c, key(i)), Lookup::Fresh);
    }
}
