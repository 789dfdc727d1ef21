//! The one cache key function and the canonical JSON form of request bodies it hashes.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Bump when anything hashed below changes meaning, so old entries simply stop matching.
const KEY_FORMAT: &[u8] = b"chatcache-key-v1";

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn to_hex(self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    pub fn from_hex(s: &str) -> Option<CacheKey> {
        blake3::Hash::from_hex(s)
            .ok()
            .map(|h| CacheKey(*h.as_bytes()))
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Who may share an entry: a base (a credential's fingerprint, a project, or everyone,
/// by `cache.scope`) and an optional namespace within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition<'a> {
    pub base: Cow<'a, str>,
    pub namespace: Option<&'a str>,
}

impl<'a> Partition<'a> {
    /// The text the key hashes.
    pub fn text(&self) -> Cow<'a, str> {
        match self.namespace {
            Some(ns) => Cow::Owned(format!("{}|ns:{ns}", self.base)),
            None => self.base.clone(),
        }
    }
}

/// What `cache explain` knows of a key besides the key itself, as short digests that say
/// whether two keys differ in their request or in which part of their partition, and
/// nothing of what they hold (a credential's fingerprint is not recoverable from them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyParts {
    /// The request without its partition: method, path and canonical body.
    pub request: [u8; 16],
    pub base: [u8; 8],
    pub namespace: [u8; 8],
}

pub fn key_parts(
    method: &str,
    path: &str,
    partition: &Partition,
    canonical_body: &[u8],
) -> KeyParts {
    let digest = |parts: &[&[u8]]| {
        let mut h = blake3::Hasher::new();
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        h.finalize()
    };
    let request = digest(&[
        KEY_FORMAT,
        method.as_bytes(),
        path.as_bytes(),
        canonical_body,
    ]);
    let base = digest(&[KEY_FORMAT, partition.base.as_bytes()]);
    let namespace = digest(&[KEY_FORMAT, partition.namespace.unwrap_or("").as_bytes()]);
    let mut parts = KeyParts::default();
    parts.request.copy_from_slice(&request.as_bytes()[..16]);
    parts.base.copy_from_slice(&base.as_bytes()[..8]);
    parts.namespace.copy_from_slice(&namespace.as_bytes()[..8]);
    parts
}

/// The key of a request: method, path (without any `/p/NAME` prefix), partition and the
/// canonical body, each length-prefixed so no two different tuples hash alike.
pub fn cache_key(method: &str, path: &str, partition: &str, canonical_body: &[u8]) -> CacheKey {
    let parts = [
        KEY_FORMAT,
        method.as_bytes(),
        path.as_bytes(),
        partition.as_bytes(),
        canonical_body,
    ];
    // One buffer hashed at once: many small hasher updates cost more than the copy.
    let mut framed = Vec::with_capacity(parts.iter().map(|p| 8 + p.len()).sum());
    for part in parts {
        framed.extend_from_slice(&(part.len() as u64).to_le_bytes());
        framed.extend_from_slice(part);
    }
    CacheKey(*blake3::hash(&framed).as_bytes())
}

/// The canonical text of a JSON body, read in one pass without building a tree: object
/// keys sorted (by their UTF-8 bytes) at every depth, no insignificant whitespace, numbers
/// and strings as serde_json writes them, and the top-level `ignore` fields left out (still
/// read and checked). Refuses what is not valid UTF-8 JSON, and any object that repeats a
/// key (serde_json would keep the last silently, which would let two readers of one body
/// disagree about what it says). Written by hand rather than relying on `serde_json::Map`
/// ordering, which a feature flag elsewhere in the dependency graph could change.
pub fn canonical_json(body: &[u8], ignore: &[String]) -> Result<Vec<u8>, serde_json::Error> {
    canonical_json_with(body, ignore, &mut |_, _| {})
}

/// `canonical_json`, also showing `top` each top-level member of an object body (ignored
/// ones too) with its value's canonical text, in the body's order.
pub fn canonical_json_with(
    body: &[u8],
    ignore: &[String],
    top: &mut dyn FnMut(&str, &[u8]),
) -> Result<Vec<u8>, serde_json::Error> {
    // Checked once here, so that no string is checked again on its own.
    let text = std::str::from_utf8(body).map_err(|e| {
        <serde_json::Error as de::Error>::custom(format!("the body is not valid UTF-8: {e}"))
    })?;
    let mut out = Vec::with_capacity(body.len());
    let mut scratch = Scratch {
        members: Vec::with_capacity(16),
        values: Vec::with_capacity(body.len()),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    Canon {
        out: &mut out,
        scratch: &mut scratch,
        top: Some(Top { ignore, show: top }),
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

/// What the top-level object's reading is told: the members to leave out, and who to show
/// each member to.
struct Top<'a> {
    ignore: &'a [String],
    show: &'a mut dyn FnMut(&str, &[u8]),
}

/// Room shared by every object of one body: members read but not yet put in order (each
/// object's above those of the objects around it), and a copy of one object's values while
/// they are put in order.
struct Scratch<'de> {
    members: Vec<(Cow<'de, str>, Range<usize>)>,
    values: Vec<u8>,
}

/// Writes one value's canonical text into `out`.
struct Canon<'a, 'de> {
    out: &'a mut Vec<u8>,
    scratch: &'a mut Scratch<'de>,
    /// Set for the body itself, not for the values inside it.
    top: Option<Top<'a>>,
}

impl<'de> Canon<'_, 'de> {
    /// The reading of a value inside this one.
    fn inner(&mut self) -> Canon<'_, 'de> {
        Canon {
            out: &mut *self.out,
            scratch: &mut *self.scratch,
            top: None,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Canon<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Canon<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        write_json(self.out, &v);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        write_json(self.out, &v);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        write_json(self.out, &v);
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // As `serde_json::Value` holds it: a number that is not finite becomes null.
        write_json(self.out, &Value::from(v));
        Ok(())
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        write_plain_str(self.out, v);
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        write_json(self.out, v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            let at = self.out.len();
            if !first {
                self.out.push(b',');
            }
            if seq.next_element_seed(self.inner())?.is_none() {
                self.out.truncate(at);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        // Each member's value is written behind the ones before it, then the members are
        // put in key order.
        let first_member = self.scratch.members.len();
        let start = self.out.len();
        while let Some(Key(k)) = map.next_key()? {
            let at = self.out.len();
            map.next_value_seed(self.inner())?;
            if let Some(top) = &mut self.top {
                (top.show)(&k, &self.out[at..]);
            }
            self.scratch.members.push((k, at..self.out.len()));
        }
        let Scratch { members, values } = &mut *self.scratch;
        let mine = &mut members[first_member..];
        mine.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if let Some(w) = mine.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(de::Error::custom(format!("duplicate key {:?}", w[0].0)));
        }
        values.clear();
        values.extend_from_slice(&self.out[start..]);
        self.out.truncate(start);
        self.out.push(b'{');
        let ignore = self.top.as_ref().map_or(&[][..], |t| t.ignore);
        let mut first = true;
        for (k, range) in mine.iter() {
            if ignore.iter().any(|i| i == k) {
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            match k {
                Cow::Borrowed(plain) => write_plain_str(self.out, plain),
                Cow::Owned(escaped) => write_json(self.out, escaped.as_str()),
            }
            self.out.push(b':');
            self.out
                .extend_from_slice(&values[range.start - start..range.end - start]);
        }
        self.out.push(b'}');
        members.truncate(first_member);
        Ok(())
    }
}

/// An object key, borrowed from the body when it holds no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A string that stood in the body with no escape, as serde_json would write it: a JSON
/// string holds no raw quote, backslash or control character, so serde_json would escape
/// nothing in it.
fn write_plain_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// A string, number, bool or null in serde_json's compact form.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, scalar: &T) {
    // Serialising a string, number, bool or null into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, scalar).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests;
