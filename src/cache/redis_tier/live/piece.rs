//! The entries of a live stream as Redis holds them (sealed fields), what they mean, and
//! the trim that bounds how much of an answer the stream keeps.

use std::collections::VecDeque;

use bytes::Bytes;
use redis::streams::{StreamId, StreamReadReply};

use super::LiveHead;
use crate::cache::redis_tier::Inner;

/// One entry of a live stream, as read back.
#[derive(Debug, PartialEq)]
pub(super) enum Piece {
    Head(LiveHead),
    Data {
        at: u64,
        data: Bytes,
    },
    End {
        complete: bool,
        len: u64,
        cost: Option<String>,
    },
}

impl Inner {
    /// The fields of an entry of the stream `name`, sealed.
    pub(super) fn seal_live(&self, name: &str, piece: Piece) -> Vec<(&'static str, Vec<u8>)> {
        let mut fields: Vec<(&'static str, Vec<u8>)> = match piece {
            Piece::Head(h) => {
                let mut f = vec![("status", h.status.to_string().into_bytes())];
                if let Some(t) = h.content_type {
                    f.push(("type", t.into_bytes()));
                }
                f
            }
            Piece::Data { at, data } => {
                vec![("at", at.to_string().into_bytes()), ("data", data.to_vec())]
            }
            Piece::End {
                complete,
                len,
                cost,
            } => {
                let end = if complete { "complete" } else { "failed" };
                let mut f = vec![
                    ("end", end.as_bytes().to_vec()),
                    ("len", len.to_string().into_bytes()),
                ];
                if let Some(c) = cost {
                    f.push(("cost", c.into_bytes()));
                }
                f
            }
        };
        let seal = self.live_seal(name, fields.iter().map(|(k, v)| (*k, v.as_slice())));
        fields.push(("seal", seal.as_bytes().to_vec()));
        fields
    }

    /// The piece an entry holds, if it is whole and sealed for the stream `name`.
    pub(super) fn unseal_live(&self, name: &str, e: &StreamId) -> Option<Piece> {
        let bytes = |k: &str| e.get::<Vec<u8>>(k);
        let text = |k: &str| bytes(k).and_then(|b| String::from_utf8(b).ok());
        let number = |k: &str| text(k)?.parse::<u64>().ok();
        let seal: [u8; 32] = bytes("seal")?.try_into().ok()?;
        let fields: Vec<(&str, Vec<u8>)> = e
            .map
            .keys()
            .filter(|k| *k != "seal")
            .map(|k| Some((k.as_str(), bytes(k)?)))
            .collect::<Option<_>>()?;
        let want = self.live_seal(name, fields.iter().map(|(k, v)| (*k, v.as_slice())));
        // blake3's Hash compares in constant time.
        if want != blake3::Hash::from_bytes(seal) {
            return None;
        }
        if let Some(status) = number("status") {
            return Some(Piece::Head(LiveHead {
                status: u16::try_from(status).ok()?,
                content_type: text("type"),
            }));
        }
        if let Some(data) = bytes("data") {
            return Some(Piece::Data {
                at: number("at")?,
                data: data.into(),
            });
        }
        Some(Piece::End {
            complete: match text("end")?.as_str() {
                "complete" => true,
                "failed" => false,
                _ => return None,
            },
            len: number("len")?,
            cost: text("cost"),
        })
    }

    /// Keyed blake3 of the stream's name and the fields, in name order, each with its length.
    fn live_seal<'a>(
        &self,
        name: &str,
        fields: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> blake3::Hash {
        let mut fields: Vec<(&str, &[u8])> = fields.collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        let mut h = blake3::Hasher::new_keyed(&self.seal);
        h.update(b"chatcache live entry\0");
        h.update(&(name.len() as u64).to_le_bytes())
            .update(name.as_bytes());
        for (k, v) in fields {
            h.update(&(k.len() as u64).to_le_bytes())
                .update(k.as_bytes());
            h.update(&(v.len() as u64).to_le_bytes()).update(v);
        }
        h.finalize()
    }
}

/// The entries of a one-stream XREAD reply, and the last one's id.
pub(super) fn entries(reply: Option<StreamReadReply>) -> (Vec<StreamId>, Option<String>) {
    let ids: Vec<StreamId> = reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .collect();
    let last = ids.last().map(|e| e.id.clone());
    (ids, last)
}

/// The id below which entries of the stream go, and out of `kept`, so that with a piece of
/// `len` bytes added after the first `at` it holds at most `max` bytes of data (the new
/// piece is kept whole, however large).
pub(super) fn trim(
    kept: &mut VecDeque<(String, u64)>,
    at: u64,
    len: u64,
    max: u64,
) -> Option<String> {
    let end = at + len;
    let mut dropped = None;
    while let Some((id, from)) = kept.front() {
        if end - from <= max {
            break;
        }
        dropped = Some(id.clone());
        kept.pop_front();
    }
    dropped.map(|id| after(&id))
}

/// The smallest stream id after `id` (`ms-seq`).
pub(super) fn after(id: &str) -> String {
    match id.split_once('-').map(|(ms, seq)| (ms, seq.parse::<u64>())) {
        Some((ms, Ok(seq))) => format!("{ms}-{}", seq.saturating_add(1)),
        // Not an id Redis makes; trimming to it at worst keeps more.
        _ => id.to_string(),
    }
}
