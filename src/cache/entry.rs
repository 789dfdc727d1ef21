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
    /// The body as the pieces it was recorded or read in: never joined, so that an answer
    /// is held in memory once however it moves (recording, store, hit).
    body: Vec<Bytes>,
    body_len: usize,
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
    pub fn new(meta: EntryMeta, body: Vec<Bytes>) -> Entry {
        let body: Vec<Bytes> = body.into_iter().filter(|p| !p.is_empty()).collect();
        let body_len = body.iter().map(Bytes::len).sum();
        let mut replay_headers = HeaderMap::with_capacity(meta.headers.len());
        for (k, v) in &meta.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
                replay_headers.append(k, v);
            }
        }
        Entry {
            meta,
            body,
            body_len,
            replay_headers,
        }
    }

    pub fn body_len(&self) -> usize {
        self.body_len
    }

    pub fn body_pieces(&self) -> &[Bytes] {
        &self.body
    }

    /// The body joined into one buffer: a copy, for the places that show or export it.
    pub fn body_bytes(&self) -> Bytes {
        match self.body.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => many.concat().into(),
        }
    }

    /// The response headers a hit replays (those of `meta.headers` that are valid).
    pub fn replay_headers(&self) -> &HeaderMap {
        &self.replay_headers
    }

    /// The record's head: `MAGIC | blake3(rest) | meta length (u32 LE) | meta JSON`; the
    /// record is the head followed by the body, whose bytes the checksum covers too.
    pub fn encode_head(&self) -> Vec<u8> {
        // Serialising plain data (strings, numbers, raw JSON) into a Vec cannot fail.
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + meta.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0; 32]);
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        let mut sum = blake3::Hasher::new();
        sum.update(&out[36..]);
        for piece in &self.body {
            sum.update(piece);
        }
        out[4..36].copy_from_slice(sum.finalize().as_bytes());
        out
    }

    /// The whole record in one buffer (for places that keep it as one value).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_head();
        out.reserve(self.body_len);
        for piece in &self.body {
            out.extend_from_slice(piece);
        }
        out
    }

    /// Reads a record made by `encode` or `encode_head` and the body, given as pieces
    /// whose first holds at least the head. The body shares the pieces (no copy is made).
    pub fn decode(mut record: Vec<Bytes>) -> Result<Entry, DecodeError> {
        let Some(first) = record.first() else {
            return Err(DecodeError::Truncated);
        };
        if first.len() < HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if &first[..4] != MAGIC {
            return Err(DecodeError::UnknownFormat);
        }
        let mut sum = blake3::Hasher::new();
        sum.update(&first[36..]);
        for piece in &record[1..] {
            sum.update(piece);
        }
        if sum.finalize().as_bytes() != &first[4..36] {
            return Err(DecodeError::Checksum);
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&first[36..40]);
        let meta_len = u32::from_le_bytes(len) as usize;
        let meta_end = HEADER_LEN
            .checked_add(meta_len)
            .filter(|end| *end <= first.len())
            .ok_or(DecodeError::Truncated)?;
        let meta: EntryMeta =
            serde_json::from_slice(&first[HEADER_LEN..meta_end]).map_err(|_| DecodeError::Meta)?;
        record[0] = first.slice(meta_end..);
        Ok(Entry::new(meta, record))
    }

    /// The body split into the chunks it arrived in (the pieces it is held in for plain
    /// answers, or when the recorded lengths do not add up). A chunk that spans two pieces
    /// is copied; any other is a view of its piece.
    pub fn chunks(&self) -> Vec<(Bytes, u32)> {
        let total: u64 = self.meta.chunks.iter().map(|(l, _)| u64::from(*l)).sum();
        if self.meta.chunks.is_empty() || total != self.body_len as u64 {
            return self.body.iter().map(|p| (p.clone(), 0)).collect();
        }
        let mut pieces = self.body.iter();
        let mut current = Bytes::new();
        let mut out = Vec::with_capacity(self.meta.chunks.len());
        for (len, ms) in &self.meta.chunks {
            let len = *len as usize;
            while current.is_empty() {
                match pieces.next() {
                    Some(p) => current = p.clone(),
                    None => break,
                }
            }
            if current.len() >= len {
                out.push((current.split_to(len), *ms));
                continue;
            }
            let mut joined = bytes::BytesMut::with_capacity(len);
            while joined.len() < len {
                if current.is_empty() {
                    match pieces.next() {
                        Some(p) => current = p.clone(),
                        None => break,
                    }
                }
                let take = (len - joined.len()).min(current.len());
                joined.extend_from_slice(&current.split_to(take));
            }
            out.push((joined.freeze(), *ms));
        }
        out
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
        (self.body_len + self.meta.request.get().len() + timings + 512) as u64
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
            vec![Bytes::from_static(b"data: x\n\n\n\n")],
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
        let d = Entry::decode(vec![e.encode().into()]).unwrap();
        assert_eq!(d.body_bytes(), e.body_bytes());
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
                Entry::decode(vec![bad.into()]).is_err(),
                "flip at {i} went unnoticed"
            );
        }
        let bytes = Bytes::from(bytes);
        assert_eq!(
            Entry::decode(vec![bytes.slice(..10)]).unwrap_err(),
            DecodeError::Truncated
        );
        assert!(Entry::decode(vec![bytes.slice(..bytes.len() - 1)]).is_err());
    }

    #[test]
    fn a_record_in_pieces_reads_back_and_stream_chunks_span_its_seams() {
        let mut e = sample(true);
        e.meta.chunks = vec![(3, 0), (4, 5), (4, 9)];
        // Pieces cut across the recorded chunks: "dat" "a: x\n" "\n\n\n".
        let cut = Entry::new(
            e.meta.clone(),
            vec![
                Bytes::from_static(b"da"),
                Bytes::from_static(b"ta: "),
                Bytes::from_static(b"x\n\n\n\n"),
            ],
        );
        let head = cut.encode_head();
        let mut record = vec![Bytes::from(head)];
        record.extend(cut.body_pieces().iter().cloned());
        let d = Entry::decode(record.clone()).unwrap();
        assert_eq!(d.body_bytes(), e.body_bytes());
        assert_eq!(
            d.encode(),
            e.encode(),
            "pieces or one buffer: the same record"
        );
        let chunks: Vec<_> = d.chunks().into_iter().collect();
        let texts: Vec<_> = chunks.iter().map(|(b, ms)| (b.to_vec(), *ms)).collect();
        assert_eq!(
            texts,
            vec![
                (b"dat".to_vec(), 0),
                (b"a: x".to_vec(), 5),
                (b"\n\n\n\n".to_vec(), 9)
            ]
        );
        let mut bad = record;
        let mut last = bad[3].to_vec();
        last[0] ^= 1;
        bad[3] = last.into();
        assert_eq!(Entry::decode(bad).unwrap_err(), DecodeError::Checksum);
    }
}
