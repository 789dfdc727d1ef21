//! Rollups in `Space::Rollups`: counters per (day, project, model, key fingerprint), the
//! per-file ledger watermarks, and keeping both in step with the ledger (batch apply,
//! catch-up after a crash, full rebuild).
//!
//! Keys: `d` + day ("YYYY-MM-DD", so a date range is a key range) + project, model and
//! key, each length-prefixed (an absent model/key is a distinct `0` tag); values are
//! seven big-endian 8-byte fields (floats as their exact bits). `w` + file name → the
//! byte offset after the last line of that file folded into the counters. `v` → format
//! version. Sums are added line by line in ledger order, so live rollups and a rebuild
//! agree bit for bit.

use std::collections::BTreeMap;

// foldhash (seeded per process) rather than SipHash: every ledger line looks its group up.
use foldhash::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ledger;
use super::{LedgerLine, Outcome, SpendError};
use crate::store::{Op, Space, Store};

const VERSION_KEY: &[u8] = b"v";
const VERSION: &[u8] = b"rollups-1";
const AGG: u8 = b'd';
const WATERMARK: u8 = b'w';

/// The counters of a report row, of a total, and of one rollup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub requests: u64,
    /// Requests that made their own upstream call (miss, refresh, bypass).
    pub upstream_requests: u64,
    /// Requests answered without their own upstream call (hit, coalesced).
    pub cache_hits: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
    pub saved: f64,
}

impl Counters {
    pub fn add_line(&mut self, line: &LedgerLine) {
        self.requests = self.requests.saturating_add(1);
        if line.outcome.went_upstream() {
            self.upstream_requests = self.upstream_requests.saturating_add(1);
        }
        if matches!(line.outcome, Outcome::Hit | Outcome::Coalesced) {
            self.cache_hits = self.cache_hits.saturating_add(1);
        }
        self.input_tokens = self
            .input_tokens
            .saturating_add(line.input_tokens.unwrap_or(0));
        self.output_tokens = self
            .output_tokens
            .saturating_add(line.output_tokens.unwrap_or(0));
        self.cost += line.cost_f64();
        self.saved += line.saved_f64();
    }

    pub fn add(&mut self, o: &Counters) {
        self.requests = self.requests.saturating_add(o.requests);
        self.upstream_requests = self.upstream_requests.saturating_add(o.upstream_requests);
        self.cache_hits = self.cache_hits.saturating_add(o.cache_hits);
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cost += o.cost;
        self.saved += o.saved;
    }

    fn encode(&self) -> Vec<u8> {
        let fields = [
            self.requests,
            self.upstream_requests,
            self.cache_hits,
            self.input_tokens,
            self.output_tokens,
            self.cost.to_bits(),
            self.saved.to_bits(),
        ];
        fields.iter().flat_map(|f| f.to_be_bytes()).collect()
    }

    fn decode(bytes: &[u8]) -> Option<Counters> {
        if bytes.len() != 56 {
            return None;
        }
        let mut f = bytes
            .chunks_exact(8)
            .map(|c| c.try_into().map(u64::from_be_bytes).unwrap_or(0));
        let mut next = || f.next().unwrap_or(0);
        Some(Counters {
            requests: next(),
            upstream_requests: next(),
            cache_hits: next(),
            input_tokens: next(),
            output_tokens: next(),
            cost: f64::from_bits(next()),
            saved: f64::from_bits(next()),
        })
    }
}

/// What one rollup counts: a UTC day, a project, a model and a key fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Group {
    pub day: String,
    pub project: String,
    pub model: Option<String>,
    pub key: Option<String>,
}

impl Group {
    pub fn of(line: &LedgerLine) -> Group {
        let mut day = line.day();
        if day.len() != 10 {
            // Only years 0000..=9999 format to 10 bytes; anything else is a broken clock.
            day = "0000-01-01".to_string();
        }
        Group {
            day,
            project: line.project.to_string(),
            model: line.model.as_deref().map(str::to_string),
            key: line.key.as_deref().map(str::to_string),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(32 + self.project.len());
        k.push(AGG);
        k.extend_from_slice(self.day.as_bytes());
        put_str(&mut k, &self.project);
        for opt in [&self.model, &self.key] {
            match opt {
                None => k.push(0),
                Some(s) => {
                    k.push(1);
                    put_str(&mut k, s);
                }
            }
        }
        k
    }

    fn decode(k: &[u8]) -> Option<Group> {
        let rest = k.strip_prefix(&[AGG])?;
        let day = std::str::from_utf8(rest.get(..10)?).ok()?.to_string();
        let mut rest = &rest[10..];
        let project = take_str(&mut rest)?;
        let mut opts = [None, None];
        for slot in &mut opts {
            let (&tag, tail) = rest.split_first()?;
            rest = tail;
            *slot = match tag {
                0 => None,
                1 => Some(take_str(&mut rest)?),
                _ => return None,
            };
        }
        let [model, key] = opts;
        rest.is_empty().then_some(Group {
            day,
            project,
            model,
            key,
        })
    }
}

fn put_str(k: &mut Vec<u8>, s: &str) {
    k.extend_from_slice(&(s.len() as u32).to_be_bytes());
    k.extend_from_slice(s.as_bytes());
}

fn take_str(rest: &mut &[u8]) -> Option<String> {
    let len_bytes: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let s = std::str::from_utf8(rest.get(4..4 + len)?).ok()?.to_string();
    *rest = &rest[4 + len..];
    Some(s)
}

fn watermark_key(file: &str) -> Vec<u8> {
    let mut k = vec![WATERMARK];
    k.extend_from_slice(file.as_bytes());
    k
}

/// Folds lines into counters, starting from what the store holds (or from nothing).
pub(crate) struct Accum {
    store: Store,
    load: bool,
    groups: HashMap<Group, Counters>,
    watermarks: BTreeMap<String, u64>,
    /// The group of the last line added, and its UTC date: runs of lines of one group (the
    /// usual case) are added without building their group again.
    last: Option<(Group, time::Date)>,
}

impl Accum {
    pub(crate) fn new(store: &Store, load_existing: bool) -> Accum {
        Accum {
            store: store.clone(),
            load: load_existing,
            groups: HashMap::default(),
            watermarks: BTreeMap::new(),
            last: None,
        }
    }

    pub(crate) fn add(&mut self, line: &LedgerLine) -> Result<(), SpendError> {
        if let Some((group, date)) = &self.last {
            if *group.project == *line.project
                && group.model.as_deref() == line.model.as_deref()
                && group.key.as_deref() == line.key.as_deref()
                && *date == line.utc_date()
            {
                if let Some(c) = self.groups.get_mut(group) {
                    c.add_line(line);
                    return Ok(());
                }
            }
        }
        let group = Group::of(line);
        self.last = Some((group.clone(), line.utc_date()));
        if let Some(c) = self.groups.get_mut(&group) {
            c.add_line(line);
            return Ok(());
        }
        let mut c = Counters::default();
        if self.load {
            if let Some(bytes) = self.store.get(Space::Rollups, &group.encode())? {
                c = Counters::decode(&bytes)
                    .ok_or_else(|| SpendError::Corrupt("undecodable rollup".into()))?;
            }
        }
        c.add_line(line);
        self.groups.insert(group, c);
        Ok(())
    }

    pub(crate) fn watermark(&mut self, file: &str, offset: u64) {
        self.watermarks.insert(file.to_string(), offset);
    }

    /// Writes the counters and watermarks in one atomic batch.
    pub(crate) fn commit(self, with_version: bool) -> Result<(), SpendError> {
        let mut ops: Vec<Op> = self
            .groups
            .iter()
            .map(|(g, c)| Op::Put(g.encode(), c.encode()))
            .collect();
        for (file, offset) in &self.watermarks {
            ops.push(Op::Put(watermark_key(file), offset.to_be_bytes().to_vec()));
        }
        if with_version {
            ops.push(Op::Put(VERSION_KEY.to_vec(), VERSION.to_vec()));
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.store.apply(Space::Rollups, ops)?;
        Ok(())
    }
}

/// True if the space carries our version marker and every pair in it decodes.
pub(crate) fn is_valid(store: &Store) -> Result<bool, SpendError> {
    if store.get(Space::Rollups, VERSION_KEY)?.as_deref() != Some(VERSION) {
        return Ok(false);
    }
    let mut ok = true;
    store.scan_prefix(Space::Rollups, b"", |k, v| {
        ok = match k.first() {
            Some(&AGG) => Group::decode(k).is_some() && Counters::decode(v).is_some(),
            Some(&WATERMARK) => v.len() == 8 && std::str::from_utf8(&k[1..]).is_ok(),
            _ => k == VERSION_KEY,
        };
        ok
    })?;
    Ok(ok)
}

/// Clears the space and recomputes it from every ledger file.
pub(crate) fn rebuild(store: &Store, dir: &Path) -> Result<(), SpendError> {
    store.clear(Space::Rollups)?;
    let mut acc = Accum::new(store, false);
    let mut result = Ok(());
    for name in ledger::list_files(dir).map_err(|e| SpendError::io(dir, e))? {
        let path = ledger::path_of(dir, &name);
        let stats = ledger::read_file(&path, 0, |line, _| {
            if result.is_ok() {
                result = acc.add(&line);
            }
        })
        .map_err(|e| SpendError::io(&path, e))?;
        acc.watermark(&name, stats.end);
    }
    result?;
    acc.commit(true)?;
    tracing::info!("spend rollups rebuilt from the ledger");
    Ok(())
}

fn watermarks(store: &Store) -> Result<BTreeMap<String, u64>, SpendError> {
    let mut out = BTreeMap::new();
    store.scan_prefix(Space::Rollups, &[WATERMARK], |k, v| {
        if let (Ok(name), Ok(bytes)) = (std::str::from_utf8(&k[1..]), <[u8; 8]>::try_from(v)) {
            out.insert(name.to_string(), u64::from_be_bytes(bytes));
        }
        true
    })?;
    Ok(out)
}

/// Folds in the ledger lines written after the watermarks (a crash between a line's
/// fsync and its rollup). If the ledger no longer matches the watermarks (a file gone
/// or shorter), rebuilds instead. Returns the number of lines folded in.
pub(crate) fn catch_up(store: &Store, dir: &Path) -> Result<u64, SpendError> {
    let marks = watermarks(store)?;
    let files = ledger::list_files(dir).map_err(|e| SpendError::io(dir, e))?;
    for (name, offset) in &marks {
        let len = std::fs::metadata(ledger::path_of(dir, name)).map(|m| m.len());
        if !files.contains(name) || len.map_or(true, |len| len < *offset) {
            tracing::warn!(file = %name, "ledger file missing or shorter than its rollup watermark");
            rebuild(store, dir)?;
            return Ok(0);
        }
    }
    let mut acc = Accum::new(store, true);
    let mut result = Ok(());
    let mut count = 0;
    for name in &files {
        let start = marks.get(name).copied().unwrap_or(0);
        let path = ledger::path_of(dir, name);
        let stats = ledger::read_file(&path, start, |line, _| {
            if result.is_ok() {
                result = acc.add(&line);
                count += 1;
            }
        })
        .map_err(|e| SpendError::io(&path, e))?;
        if stats.end != start || !marks.contains_key(name) {
            acc.watermark(name, stats.end);
        }
    }
    result?;
    acc.commit(false)?;
    if count > 0 {
        tracing::info!(lines = count, "spend rollups caught up with the ledger");
    }
    Ok(count)
}

/// Visits the rollups of days `since..=until` ("YYYY-MM-DD"; `None` = unbounded) in key
/// order. Undecodable pairs are skipped with a warning (the next open rebuilds).
pub(crate) fn scan(
    store: &Store,
    since: Option<&str>,
    until: Option<&str>,
    mut visit: impl FnMut(Group, Counters),
) -> Result<(), SpendError> {
    let start = [&[AGG][..], since.unwrap_or("").as_bytes()].concat();
    let end = match until {
        Some(u) => [&[AGG][..], u.as_bytes(), &[0xff]].concat(),
        None => vec![AGG + 1],
    };
    store.scan_range(Space::Rollups, &start, &end, |k, v| {
        match (Group::decode(k), Counters::decode(v)) {
            (Some(g), Some(c)) => visit(g, c),
            _ => tracing::warn!("skipping an undecodable spend rollup"),
        }
        true
    })?;
    Ok(())
}

#[cfg(test)]
pub(crate) fn dump(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    store
        .scan_prefix(Space::Rollups, b"", |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_round_trip_and_sort_by_day() {
        let g = |day: &str, model: Option<&str>| Group {
            day: day.into(),
            project: "p".into(),
            model: model.map(String::from),
            key: Some("k\0x".into()),
        };
        for group in [g("2026-01-02", None), g("2026-01-02", Some(""))] {
            assert_eq!(Group::decode(&group.encode()), Some(group.clone()));
        }
        assert_ne!(
            g("2026-01-02", None).encode(),
            g("2026-01-02", Some("")).encode()
        );
        assert!(g("2026-01-02", Some("zzz")).encode() < g("2026-01-03", None).encode());
        let c = Counters {
            requests: 3,
            cost: 0.1 + 0.2,
            saved: 1e-9,
            ..Counters::default()
        };
        assert_eq!(Counters::decode(&c.encode()), Some(c));
        assert_eq!(Counters::decode(b"short"), None);
    }

    #[test]
    fn runs_of_one_group_and_changes_of_any_field_are_counted_apart() {
        use crate::spend::Outcome;
        use time::macros::datetime;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 1 << 20).unwrap();
        let line = |ts, project: &str, model: Option<&str>, key: Option<&str>| {
            let mut l = LedgerLine::new(project, "/chat/completions", Outcome::Miss, 200);
            l.ts = ts;
            l.model = model.map(std::sync::Arc::from);
            l.key = key.map(std::sync::Arc::from);
            l
        };
        let (d1, d2) = (
            datetime!(2026-11-25 23:59:59 UTC),
            datetime!(2026-11-26 00:00:00 UTC),
        );
        let lines = [
            line(d1, "a", Some("m"), Some("k")),
            line(d1, "a", Some("m"), Some("k")),
            line(d2, "a", Some("m"), Some("k")),
            line(d2, "b", Some("m"), Some("k")),
            line(d2, "b", None, Some("k")),
            line(d2, "b", None, None),
            line(d2, "b", None, None),
            line(d1, "a", Some("m"), Some("k")),
        ];
        let mut acc = Accum::new(&store, false);
        for l in &lines {
            acc.add(l).unwrap();
        }
        let mut counted: Vec<(Group, u64)> = acc
            .groups
            .iter()
            .map(|(g, c)| (g.clone(), c.requests))
            .collect();
        counted.sort();
        let g = |day: &str, project: &str, model: Option<&str>, key: Option<&str>| Group {
            day: day.into(),
            project: project.into(),
            model: model.map(String::from),
            key: key.map(String::from),
        };
        assert_eq!(
            counted,
            [
                (g("2026-11-25", "a", Some("m"), Some("k")), 3),
                (g("2026-11-26", "a", Some("m"), Some("k")), 1),
                (g("2026-11-26", "b", None, None), 2),
                (g("2026-11-26", "b", None, Some("k")), 1),
                (g("2026-11-26", "b", Some("m"), Some("k")), 1),
            ]
        );
    }
}
