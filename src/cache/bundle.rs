//! Cache bundles: export to and import from JSON Lines, credentials stripped, entries
//! re-keyed into the importing partition (to share a cache or ship one as a CI fixture).

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::cache::entry::{Entry, EntryMeta};
use crate::cache::key::{cache_key, canonical_json, key_parts, Partition};
use crate::cache::Cache;

const BUNDLE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct BundleLine {
    v: u32,
    meta: EntryMeta,
    body: String,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleCount {
    pub entries: u64,
    pub skipped: u64,
}

/// Writes every intact entry as one line. The bundle holds no partition and no
/// credential: only what was asked and answered. Calls `progress` after each line.
pub fn export(
    cache: &Cache,
    out: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<BundleCount> {
    let mut count = BundleCount::default();
    let mut failure: Option<std::io::Error> = None;
    cache.for_each(|_, entry| {
        if failure.is_some() {
            return;
        }
        let Ok(body) = String::from_utf8(entry.body_bytes().to_vec()) else {
            count.skipped += 1;
            return;
        };
        let line = BundleLine {
            v: BUNDLE_VERSION,
            meta: entry.meta,
            body,
        };
        let written = serde_json::to_writer(&mut *out, &line)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        match written {
            Ok(()) => {
                count.entries += 1;
                progress(count.entries);
            }
            Err(e) => failure = Some(e),
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    out.flush()?;
    Ok(count)
}

/// Reads a bundle and stores each entry under the key it has in `partition`, with the
/// importing daemon's `ignore_fields` applied to its request.
pub fn import(
    cache: &Cache,
    input: impl BufRead,
    partition: &Partition,
    ignore_fields: &[String],
    mut progress: impl FnMut(u64),
) -> anyhow::Result<BundleCount> {
    let mut count = BundleCount::default();
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: BundleLine = match serde_json::from_str(&line) {
            Ok(p) => p,
            Err(e) => anyhow::bail!("bundle line {}: {e}", n + 1),
        };
        if parsed.v != BUNDLE_VERSION {
            anyhow::bail!("bundle line {}: unknown bundle version {}", n + 1, parsed.v);
        }
        let canonical = canonical_json(parsed.meta.request.get().as_bytes(), ignore_fields)
            .map_err(|e| anyhow::anyhow!("bundle line {}: request: {e}", n + 1))?;
        let (method, path) = (&parsed.meta.method, &parsed.meta.path);
        let key = cache_key(method, path, &partition.text(), &canonical);
        let parts = key_parts(method, path, partition, &canonical);
        let mut meta = parsed.meta;
        meta.request = serde_json::value::RawValue::from_string(String::from_utf8(canonical)?)?;
        cache.put(key, parts, Entry::new(meta, vec![parsed.body.into()]))?;
        count.entries += 1;
        progress(count.entries);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;
    use crate::cache::tests::open;
    use crate::cache::{now_ms, Lookup};

    fn partition(base: &str) -> Partition<'_> {
        Partition {
            base: base.into(),
            namespace: None,
        }
    }

    #[test]
    fn export_then_import_rekeys_into_the_new_partition() {
        let a = open(1 << 30);
        let from = &a.cache;
        let mut e = sample(true);
        e.meta.created_ms = now_ms();
        let old_key = cache_key("POST", "/chat/completions", "alice-fp", br#"{"model":"m"}"#);
        from.put(old_key, Default::default(), e.clone()).unwrap();
        let mut bundle = Vec::new();
        let n = export(from, &mut bundle, |_| {}).unwrap();
        assert_eq!(n.entries, 1);
        let text = String::from_utf8(bundle.clone()).unwrap();
        assert!(
            !text.contains("alice-fp"),
            "partition leaked into the bundle"
        );

        let b = open(1 << 30);
        let to = &b.cache;
        let n = import(
            to,
            &bundle[..],
            &partition("bob-fp"),
            &["user".into()],
            |_| {},
        )
        .unwrap();
        assert_eq!(n.entries, 1);
        let new_key = cache_key("POST", "/chat/completions", "bob-fp", br#"{"model":"m"}"#);
        let (l, got) = to.get(new_key, None).unwrap();
        assert_eq!(l, Lookup::Fresh);
        assert_eq!(got.unwrap().body_bytes(), e.body_bytes());
        assert_eq!(to.get(old_key, None).unwrap().0, Lookup::Missing);
    }

    #[test]
    fn a_bad_line_is_an_error_naming_it() {
        let a = open(1 << 30);
        let err = import(&a.cache, &b"\n{nope\n"[..], &partition("p"), &[], |_| {}).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
