//! Tests of live streams that need no Redis: sealed entries, and the trim bound.

use super::piece::after;
use super::*;
use crate::cache::redis_tier::tests::tier;
use redis::streams::StreamId;

/// The entry Redis would hand back for `fields`.
fn as_read(fields: &[(&'static str, Vec<u8>)]) -> StreamId {
    StreamId {
        id: "1-0".into(),
        map: fields
            .iter()
            .map(|(k, v)| (k.to_string(), redis::Value::BulkString(v.clone())))
            .collect(),
        ..StreamId::default()
    }
}

fn pieces() -> Vec<Piece> {
    vec![
        Piece::Head(LiveHead {
            status: 200,
            content_type: Some("text/event-stream".into()),
        }),
        Piece::Data {
            at: 17,
            data: Bytes::from_static(b"data: {\"x\":1}\n\n"),
        },
        Piece::End {
            complete: true,
            len: 40,
            cost: Some("0.000125".into()),
        },
        Piece::End {
            complete: false,
            len: 3,
            cost: None,
        },
    ]
}

#[tokio::test]
async fn only_entries_sealed_for_their_own_stream_are_read() {
    let t = tier([1; 32]);
    let stranger = tier([2; 32]);
    let name = "chatcache:live:ab:x.0";
    for piece in pieces() {
        let fields = t.inner.seal_live(name, clone(&piece));
        let e = as_read(&fields);
        assert_eq!(t.inner.unseal_live(name, &e), Some(clone(&piece)));
        assert_eq!(
            t.inner.unseal_live("chatcache:live:ab:x.1", &e),
            None,
            "moved"
        );
        assert_eq!(stranger.inner.unseal_live(name, &e), None, "no secret");
        for (k, v) in &fields {
            for at in 0..v.len() {
                let mut bad = fields.clone();
                let Some((_, b)) = bad.iter_mut().find(|(n, _)| n == k) else {
                    unreachable!()
                };
                b[at] ^= 1;
                assert_eq!(t.inner.unseal_live(name, &as_read(&bad)), None, "{k}[{at}]");
            }
            let fewer: Vec<_> = fields.iter().filter(|(n, _)| n != k).cloned().collect();
            assert_eq!(
                t.inner.unseal_live(name, &as_read(&fewer)),
                None,
                "without {k}"
            );
        }
        let mut more = fields.clone();
        more.push(("data", b"planted".to_vec()));
        assert_eq!(t.inner.unseal_live(name, &as_read(&more)), None, "added");
    }
}

fn clone(p: &Piece) -> Piece {
    match p {
        Piece::Head(h) => Piece::Head(h.clone()),
        Piece::Data { at, data } => Piece::Data {
            at: *at,
            data: data.clone(),
        },
        Piece::End {
            complete,
            len,
            cost,
        } => Piece::End {
            complete: *complete,
            len: *len,
            cost: cost.clone(),
        },
    }
}

#[test]
fn the_stream_keeps_at_most_max_entry_bytes_besides_the_new_piece() {
    let mut kept: VecDeque<(String, u64)> = VecDeque::new();
    // Pieces of 10 bytes, at most 25 kept.
    let mut at = 0;
    let mut trims = Vec::new();
    for n in 0..5u64 {
        trims.push(trim(&mut kept, at, 10, 25));
        kept.push_back((format!("{n}-0"), at));
        at += 10;
    }
    // With the third piece added, 30 bytes: the first goes (ids below 0-1).
    assert_eq!(
        trims,
        vec![
            None,
            None,
            Some("0-1".into()),
            Some("1-1".into()),
            Some("2-1".into())
        ]
    );
    assert_eq!(kept.iter().map(|k| k.1).collect::<Vec<_>>(), vec![30, 40]);
    // A piece larger than the bound on its own: everything before it goes.
    assert_eq!(trim(&mut kept, at, 100, 25), Some("4-1".into()));
    assert!(kept.is_empty());
    assert_eq!(after("1700000000000-7"), "1700000000000-8");
}
