//! The stored form of one cached answer: a versioned, checksummed record of status,
//! replayable headers, body (with stream chunk timings), the canonical request and its cost.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::cache::key::KeyParts;
use crate::cache::storage::Summary;
use crate::cost::{CostSource, Money};

const MAGIC: &[u8; 4] = b"CCE1";
const HEADER_LEN: usize = 4 + 32 + 4;

/// Everything about an entry except its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryMeta {
    pub status: u16,
    /// Response headers worth replaying (content type and the like).
    pub headers: Vec<(String, String)>,
    /// A streamed (SSE) answer; `chunks` then holds the pieces as they arrived.
    pub stream: bool,
    /// (length in bytes, milliseconds since the response started) per upstream chunk.
    #[serde(default)]
    pub chunks: Vec<(u32, u32)>,
    pub created_ms: u64,
    pub method: String,
    /// Path as keyed (project prefix removed).
    pub path: String,
    /// The canonical request body (what the key hashes), for `cache show` and re-keying.
    pub request: Box<RawValue>,
    pub model: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The cost of producing this answer, as upstream wrote it (or estimated).
    pub cost: Option<Money>,
    pub cost_source: CostSource,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub meta: EntryMeta,
    pub body: Bytes,
    /// `meta.headers` as a header map, built once: every hit clones it.
    replay_headers: HeaderMap,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("entry is truncated")]
    Truncated,
    #[error("entry has an unknown format version")]
    UnknownFormat,
    #[error("entry fails its checksum")]
    Checksum,
    #[error("entry metadata is unreadable")]
    Meta,
}

impl Entry {
    pub fn new(meta: EntryMeta, body: Bytes) -> Entry {
        let mut replay_headers = HeaderMap::with_capacity(meta.headers.len());
        for (k, v) in &meta.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
                replay_headers.append(k, v);
            }
        }
        Entry {
            meta,
            body,
            replay_headers,
        }
    }

    /// The response headers a hit replays (those of `meta.headers` that are valid).
    pub fn replay_headers(&self) -> &HeaderMap {
        &self.replay_headers
    }

    /// `MAGIC | blake3(rest) | meta length (u32 LE) | meta JSON | body`.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data (strings, numbers, raw JSON) into a Vec cannot fail.
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + meta.len() + self.body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0; 32]);
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.body);
        let sum = blake3::hash(&out[36..]);
        out[4..36].copy_from_slice(sum.as_bytes());
        out
    }

    /// Reads a record made by `encode`. The body shares `bytes` (no copy is made).
    pub fn decode(bytes: Bytes) -> Result<Entry, DecodeError> {
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if &bytes[..4] != MAGIC {
            return Err(DecodeError::UnknownFormat);
        }
        if blake3::hash(&bytes[36..]).as_bytes() != &bytes[4..36] {
            return Err(DecodeError::Checksum);
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[36..40]);
        let meta_len = u32::from_le_bytes(len) as usize;
        let meta_end = HEADER_LEN
            .checked_add(meta_len)
            .filter(|end| *end <= bytes.len())
            .ok_or(DecodeError::Truncated)?;
        let meta: EntryMeta =
            serde_json::from_slice(&bytes[HEADER_LEN..meta_end]).map_err(|_| DecodeError::Meta)?;
        Ok(Entry::new(meta, bytes.slice(meta_end..)))
    }

    /// The body split into the chunks it arrived in (one chunk for plain answers, or when
    /// the recorded lengths do not add up).
    pub fn chunks(&self) -> Vec<(Bytes, u32)> {
        let total: u64 = self.meta.chunks.iter().map(|(l, _)| u64::from(*l)).sum();
        if self.meta.chunks.is_empty() || total != self.body.len() as u64 {
            return vec![(self.body.clone(), 0)];
        }
        let mut at = 0usize;
        self.meta
            .chunks
            .iter()
            .map(|(len, ms)| {
                let piece = self.body.slice(at..at + *len as usize);
                at += *len as usize;
                (piece, *ms)
            })
            .collect()
    }

    /// What scans of the store need to know of the entry, stored as `record_len` bytes.
    pub fn summary(&self, record_len: usize, last_used: u64, parts: KeyParts) -> Summary {
        Summary {
            bytes: record_len as u64,
            created_ms: self.meta.created_ms,
            last_used,
            status: self.meta.status,
            stream: self.meta.stream,
            method: self.meta.method.clone(),
            path: self.meta.path.clone(),
            model: self.meta.model.clone(),
            parts,
        }
    }

    /// About what the entry takes in memory: its body, its request, its stream timings,
    /// and an allowance for the small fields and headers.
    pub fn memory_size(&self) -> u64 {
        let timings = self.meta.chunks.len() * std::mem::size_of::<(u32, u32)>();
        (self.body.len() + self.meta.request.get().len() + timings + 512) as u64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(stream: bool) -> Entry {
        Entry::new(
            EntryMeta {
                status: 200,
                headers: vec![("content-type".into(), "text/event-stream".into())],
                stream,
                chunks: vec![(6, 0), (5, 12)],
                created_ms: 1_700_000_000_000,
                method: "POST".into(),
                path: "/chat/completions".into(),
                request: RawValue::from_string(r#"{"model":"m"}"#.into()).unwrap(),
                model: Some("m".into()),
                input_tokens: Some(3),
                output_tokens: Some(4),
                cost: Some(RawValue::from_string("0.000114".into()).unwrap().into()),
                cost_source: CostSource::Upstream,
            },
            Bytes::from_static(b"data: x\n\n\n\n"),
        )
    }

    #[test]
    fn memory_size_counts_the_request_and_the_timings() {
        let small = sample(true);
        let mut large = sample(true);
        let prompt = "x".repeat(10_000);
        large.meta.request = RawValue::from_string(format!(r#"{{"p":"{prompt}"}}"#)).unwrap();
        large.meta.chunks = vec![(1, 0); 1000];
        let request_growth = large.meta.request.get().len() - small.meta.request.get().len();
        assert!(request_growth > 9_000);
        assert_eq!(
            large.memory_size() - small.memory_size(),
            (request_growth + 8 * (1000 - 2)) as u64
        );
    }

    #[test]
    fn round_trips_with_cost_text_verbatim() {
        let e = sample(true);
        let d = Entry::decode(e.encode().into()).unwrap();
        assert_eq!(d.body, e.body);
        assert_eq!(d.meta.cost.as_ref().unwrap().get(), "0.000114");
        let chunks: Vec<_> = d
            .chunks()
            .into_iter()
            .map(|(b, ms)| (b.len(), ms))
            .collect();
        assert_eq!(chunks, vec![(6, 0), (5, 12)]);
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let bytes = sample(false).encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                Entry::decode(bad.into()).is_err(),
                "flip at {i} went unnoticed"
            );
        }
        let bytes = Bytes::from(bytes);
        assert_eq!(
            Entry::decode(bytes.slice(..10)).unwrap_err(),
            DecodeError::Truncated
        );
        assert!(Entry::decode(bytes.slice(..bytes.len() - 1)).is_err());
    }
}
