//! Tests of the cache key and the canonical JSON form: order and spacing never matter, every
//! other change does.

use super::*;
use proptest::prelude::*;
use serde_json::json;

/// The canonical text of a value, through its serialised form.
fn canon(v: &Value, ignore: &[String]) -> Vec<u8> {
    canonical_json(&serde_json::to_vec(v).unwrap(), ignore).unwrap()
}

fn key_of(v: &Value) -> CacheKey {
    cache_key(
        "POST",
        "/chat/completions",
        "p",
        &canon(v, &["user".into()]),
    )
}

/// Each object's members, in the order a text is to hold them.
type Arrange<'a> = &'a dyn Fn(&mut Vec<(&String, &Value)>, usize);

/// `v` as JSON text: each object's members put in order by `arrange` (told the depth),
/// the top level's `ignore` members left out, `comma` and `colon` between.
fn json_text(
    v: &Value,
    depth: usize,
    arrange: Arrange,
    (comma, colon): (&[u8], &[u8]),
    ignore: &[String],
    out: &mut Vec<u8>,
) {
    let items: Vec<(Option<&String>, &Value)> = match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map
                .iter()
                .filter(|(k, _)| !ignore.iter().any(|i| i == *k))
                .collect();
            arrange(&mut entries, depth);
            entries.into_iter().map(|(k, v)| (Some(k), v)).collect()
        }
        Value::Array(items) => items.iter().map(|v| (None, v)).collect(),
        scalar => {
            out.extend_from_slice(&serde_json::to_vec(scalar).unwrap());
            return;
        }
    };
    let (open, close) = if v.is_object() {
        (b'{', b'}')
    } else {
        (b'[', b']')
    };
    out.push(open);
    for (i, (k, v)) in items.into_iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(comma);
        }
        if let Some(k) = k {
            out.extend_from_slice(&serde_json::to_vec(k).unwrap());
            out.extend_from_slice(colon);
        }
        json_text(v, depth + 1, arrange, (comma, colon), &[], out);
    }
    out.push(close);
}

/// The canonical form as a tree-walk states it: the reference the one-pass reader is
/// held to.
fn tree_canonical(v: &Value, ignore: &[String], out: &mut Vec<u8>) {
    let sorted: Arrange = &|entries, _| entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    json_text(v, 0, sorted, (b",", b":"), ignore, out);
}

/// `v` as JSON text with every object's members in another order than sorted (rotated
/// by `turn` plus the depth, and reversed at odd ones) and spaces around separators.
fn unordered_text(v: &Value, turn: usize, out: &mut Vec<u8>) {
    let shuffled: Arrange = &|entries, depth| {
        let turn = turn + depth;
        if !entries.is_empty() {
            let n = entries.len();
            entries.rotate_left(turn % n);
        }
        if turn % 2 == 1 {
            entries.reverse();
        }
    };
    json_text(v, 0, shuffled, (b", ", b" : "), &[], out);
}

#[test]
fn strict_json_rules() {
    assert!(canonical_json(br#"{"a":1,"b":{"c":[1,2]}}"#, &[]).is_ok());
    for bad in [
        &br#"{"a":1,"a":2}"#[..],
        br#"{"a":{"b":1,"b":1}}"#,
        br#"[{"b":1,"b":1}]"#,
        br#"{"a":1"#,
        br#"{"a":1} x"#,
        b"{\"a\":\"\xff\"}",
        b"",
    ] {
        assert!(
            canonical_json(bad, &[]).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let e = canonical_json(br#"{"x":[{"b":1,"a":2,"b":3}]}"#, &[]).unwrap_err();
    assert!(e.to_string().contains("duplicate key \"b\""), "{e}");
    // A duplicate among ignored fields is refused as well: they are read all the same.
    assert!(canonical_json(br#"{"user":1,"user":2}"#, &["user".into()]).is_err());
}

#[test]
fn key_order_and_spacing_do_not_matter() {
    let a: Value = serde_json::from_str(
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
    )
    .unwrap();
    let b: Value = serde_json::from_str(
        "{ \"temperature\" : 0.5,\n \"messages\": [ {\"content\":\"hi\", \"role\":\"user\"} ], \"model\":\"m\" }",
    )
    .unwrap();
    assert_eq!(key_of(&a), key_of(&b));
    assert_eq!(
        String::from_utf8(canon(&b, &[])).unwrap(),
        r#"{"messages":[{"content":"hi","role":"user"}],"model":"m","temperature":0.5}"#
    );
}

#[test]
fn ignored_fields_only_at_top_level() {
    let a = json!({"model":"m","user":"alice","messages":[{"user":"x"}]});
    let b = json!({"model":"m","user":"bob","messages":[{"user":"x"}]});
    let c = json!({"model":"m","user":"bob","messages":[{"user":"y"}]});
    assert_eq!(key_of(&a), key_of(&b));
    assert_ne!(key_of(&b), key_of(&c));
}

#[test]
fn every_tuple_part_changes_the_key() {
    let body = canon(&json!({"model":"m"}), &[]);
    let base = cache_key("POST", "/a", "p", &body);
    assert_ne!(base, cache_key("GET", "/a", "p", &body));
    assert_ne!(base, cache_key("POST", "/b", "p", &body));
    assert_ne!(base, cache_key("POST", "/a", "q", &body));
    assert_ne!(base, cache_key("POST", "/a", "p", b"{}"));
    // Length prefixes keep shifted boundaries apart.
    assert_ne!(
        cache_key("POST", "/ab", "c", b""),
        cache_key("POST", "/a", "bc", b"")
    );
}

#[test]
fn key_layout_is_stable_so_stored_entries_keep_matching() {
    // Each part length-prefixed (u64 LE) and hashed in order.
    let mut h = blake3::Hasher::new();
    for part in [
        KEY_FORMAT,
        b"POST",
        b"/chat/completions",
        b"fp",
        b"{\"a\":1}",
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    assert_eq!(
        cache_key("POST", "/chat/completions", "fp", b"{\"a\":1}").0,
        *h.finalize().as_bytes()
    );
}

#[test]
fn hex_round_trips() {
    let k = key_of(&json!({"a":1}));
    assert_eq!(CacheKey::from_hex(&k.to_hex()), Some(k));
    assert_eq!(CacheKey::from_hex("zz"), None);
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1.0e6f64..1.0e6).prop_map(|f| json!(f)),
        "[a-zé😀 ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zé😀\"\\\\\n]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// No false hits: two bodies share a key exactly when they are the same JSON
    /// once the ignored field is removed.
    #[test]
    fn equal_key_iff_equal_body(a in arb_json(), b in arb_json(), field in "[a-z]{1,4}") {
        let mut ra = json!({"model": "m", "params": a});
        let mut rb = json!({"model": "m", "params": b});
        ra[field.as_str()] = json!(1);
        rb[field.as_str()] = json!(1);
        let same = ra == rb;
        prop_assert_eq!(key_of(&ra) == key_of(&rb), same);
    }

    /// Changing any top-level field value changes the key.
    #[test]
    fn changed_field_misses(v in arb_json(), field in "(model|messages|temperature|tools|seed|n|stream|top_p|max_tokens)") {
        let base = json!({"model": "m", "messages": [], "temperature": 1, "tools": [], "seed": 1, "n": 1, "stream": false, "top_p": 1, "max_tokens": 5});
        let mut changed = base.clone();
        changed[field.as_str()] = json!({"changed": v});
        prop_assert_ne!(key_of(&base), key_of(&changed));
    }

    /// The one-pass reading gives the tree-walk's text, whatever the body's key order
    /// and spacing, and the text reads back as the same value.
    #[test]
    fn canonical_is_the_tree_walks_text(v in arb_json(), turn in 0usize..8, ignore in "[a-z]{1,4}") {
        let ignore = vec![ignore];
        let mut text = Vec::new();
        unordered_text(&v, turn, &mut text);
        let mut expected = Vec::new();
        tree_canonical(&v, &ignore, &mut expected);
        prop_assert_eq!(canonical_json(&text, &ignore).unwrap(), expected);
        let back: Value = serde_json::from_slice(&canon(&v, &[])).unwrap();
        prop_assert_eq!(back, v);
    }
}
