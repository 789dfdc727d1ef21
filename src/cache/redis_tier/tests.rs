//! Tests of the team tier that need no Redis: seals, and a tier not yet reached.

use super::*;
use crate::cache::entry::tests::sample;

/// A tier whose Redis is a closed port: nothing here talks to it.
pub(super) fn tier(seal: [u8; 32]) -> TeamTier {
    let text = "[team]\nredis = \"redis://127.0.0.1:1/0\"\n";
    let ov = crate::config::Overrides {
        data_dir: Some("/nonexistent".into()),
        ..Default::default()
    };
    let config = crate::config::Config::from_parts(None, Some(text), ov, |_| None).unwrap();
    let t = &config.team_cache;
    TeamTier::open(t.redis.as_ref().unwrap(), t, Duration::from_secs(60), seal).unwrap()
}

#[tokio::test]
async fn only_an_intact_entry_sealed_under_its_own_key_is_taken() {
    let t = tier([1; 32]);
    let (key, other) = (CacheKey([5; 32]), CacheKey([6; 32]));
    let entry = sample(true);
    let value = Bytes::from(t.inner.seal(&key, entry.encode()));
    let back = t.inner.unseal(&key, value.clone()).expect("intact");
    assert_eq!(back.body_bytes(), entry.body_bytes());
    assert!(t.inner.unseal(&other, value.clone()).is_none(), "moved");
    let stranger = tier([2; 32]);
    assert!(stranger.inner.unseal(&key, value.clone()).is_none());
    for at in [0, 4, 40, value.len() / 2, value.len() - 1] {
        let mut bad = value.to_vec();
        bad[at] ^= 0x01;
        assert!(t.inner.unseal(&key, bad.into()).is_none(), "flip at {at}");
    }
    assert!(t.inner.unseal(&key, value.slice(..20)).is_none());
    // A record with a valid checksum but no seal (as the local store keeps it).
    assert!(t.inner.unseal(&key, entry.encode().into()).is_none());
}

#[tokio::test]
async fn a_tier_not_yet_reached_is_skipped_without_waiting() {
    let t = tier([1; 32]);
    assert!(!t.is_up());
    // Resolved at its first poll: no exchange with Redis was even begun.
    let got = futures_util::FutureExt::now_or_never(t.get(&CacheKey([5; 32]), None));
    assert!(matches!(got, Some(None)));
    assert_eq!(t.stats().misses, 0);
    t.offer(CacheKey([5; 32]), Arc::new(sample(false)), None);
    t.close().await;
    assert_eq!(t.stats().written, 0);
    assert_eq!(
        t.entry_name(&CacheKey([0xab; 32])),
        format!("chatcache:e:{}", "ab".repeat(32))
    );
}
