//! What a request body says about its prompt: the model, the stream flag, how many
//! characters of text it holds (for estimates) and the text of its last user message (for
//! the dashboard). Read from the canonical text of the body's top-level members as the
//! canonical reading meets them (`cache::key::canonical_json_with`), without a tree.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The parts of a request body the proxy reads besides its canonical form.
#[derive(Debug, Default, PartialEq)]
pub struct Prompt {
    pub model: Option<String>,
    pub stream: bool,
    /// The most output tokens the request lets the model write.
    pub max_tokens: Option<u64>,
    /// Characters of text: the messages' contents, `text` and `input`.
    pub chars: usize,
    /// The content of the last user message if it is a string, else `text`, else `input`
    /// (only when asked for).
    pub last_user_text: Option<String>,
}

/// Builds a `Prompt` from the body's top-level members, shown one at a time (in any order)
/// as the canonical reading of the body meets them.
#[derive(Default)]
pub struct PromptReader {
    keep_text: bool,
    read: Prompt,
    from_messages: Option<Option<String>>,
    text: Option<String>,
    input: Option<String>,
}

impl PromptReader {
    pub fn new(keep_text: bool) -> PromptReader {
        PromptReader {
            keep_text,
            ..PromptReader::default()
        }
    }

    /// Notes one top-level member, from its value's canonical text. That text is JSON this
    /// crate wrote, so reading it cannot fail; if it somehow did, the member would count
    /// for nothing.
    pub fn note(&mut self, key: &str, value: &[u8]) {
        match key {
            "model" => self.read.model = string(value),
            "stream" => self.read.stream = value == b"true",
            "max_tokens" => {
                self.read.max_tokens = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok())
            }
            "messages" => {
                let m = read_messages(value, self.keep_text);
                self.read.chars += m.chars;
                self.from_messages = m.last_user_text;
            }
            "text" => {
                self.read.chars += text_len(value);
                if self.keep_text {
                    self.text = string(value);
                }
            }
            "input" => {
                self.read.chars += text_len(value);
                if self.keep_text {
                    self.input = string(value);
                }
            }
            _ => {}
        }
    }

    pub fn finish(self) -> Prompt {
        Prompt {
            last_user_text: self.from_messages.flatten().or(self.text).or(self.input),
            ..self.read
        }
    }
}

/// What reading `messages` found: characters of text, and the last user message's content
/// (`Some(None)` if that content is not a string, or is not kept).
#[derive(Default)]
struct Read {
    chars: usize,
    last_user_text: Option<Option<String>>,
}

/// Object keys that matter here.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Text,
    Content,
    #[serde(other)]
    Other,
}

/// Characters of text in a value: a string's own, an array's items' together, an object's
/// `text` (or else its `content`); none in anything else.
struct TextLen;

impl<'de> DeserializeSeed<'de> for TextLen {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TextLen {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_i64<E>(self, _: i64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_u64<E>(self, _: u64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_f64<E>(self, _: f64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_str<E>(self, v: &str) -> Result<usize, E> {
        Ok(v.chars().count())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(len) = seq.next_element_seed(TextLen)? {
            n += len;
        }
        Ok(n)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let (mut text, mut content) = (None, None);
        while let Some(field) = map.next_key()? {
            match field {
                Field::Text => text = Some(map.next_value_seed(TextLen)?),
                Field::Content => content = Some(map.next_value_seed(TextLen)?),
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(text.or(content).unwrap_or(0))
    }
}

/// A chat request's `messages` from their canonical text: the characters of every message's
/// content, and the last user message's content. Anything but an array counts for nothing,
/// as does any item of it that is not an object.
fn read_messages(value: &[u8], keep_text: bool) -> Read {
    let mut read = Read::default();
    let Ok(items) = serde_json::from_slice::<Vec<&RawValue>>(value) else {
        return read;
    };
    for item in items {
        // Only an object is a message (serde would also read an array into the struct).
        if !item.get().starts_with('{') {
            continue;
        }
        let Ok(m) = serde_json::from_str::<Message>(item.get()) else {
            continue;
        };
        if let Some(content) = m.content {
            read.chars += text_len(content.get().as_bytes());
        }
        if m.role.is_some_and(is_user) {
            read.last_user_text = Some(
                m.content
                    .filter(|_| keep_text)
                    .and_then(|c| string(c.get().as_bytes())),
            );
        }
    }
    read
}

/// The members of a message that are read; the rest are skipped.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// Whether a role, as canonical JSON text, is the string `user`. Canonical text writes a
/// string plainly unless it holds a quote, a backslash or a control character, so `user`
/// (however the body escaped it) always reads exactly so.
fn is_user(role: &RawValue) -> bool {
    role.get() == "\"user\""
}

/// A JSON text's string, if it is one.
fn string(value: &[u8]) -> Option<String> {
    serde_json::from_slice(value).ok()
}

/// `TextLen` of a JSON text.
fn text_len(value: &[u8]) -> usize {
    TextLen
        .deserialize(&mut serde_json::Deserializer::from_slice(value))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// The body's prompt as the proxy reads it: shown member by member by the canonical
    /// reading.
    fn read(body: &[u8], keep_text: bool) -> Prompt {
        let mut reader = PromptReader::new(keep_text);
        crate::cache::key::canonical_json_with(body, &[], &mut |k, v| reader.note(k, v)).unwrap();
        reader.finish()
    }

    /// The same readings over a tree: the reference the one-pass reader is held to.
    fn from_tree(body: &Value, keep_text: bool) -> Prompt {
        fn text_len(v: &Value) -> usize {
            match v {
                Value::String(s) => s.chars().count(),
                Value::Array(items) => items.iter().map(text_len).sum(),
                Value::Object(m) => m
                    .get("text")
                    .or_else(|| m.get("content"))
                    .map_or(0, text_len),
                _ => 0,
            }
        }
        let messages = body.get("messages").and_then(Value::as_array);
        let chars = messages.map_or(0, |ms| {
            ms.iter()
                .map(|m| m.get("content").map_or(0, text_len))
                .sum::<usize>()
        }) + body.get("text").map_or(0, text_len)
            + body.get("input").map_or(0, text_len);
        let last_user_text = messages
            .and_then(|ms| {
                ms.iter()
                    .rev()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                    .and_then(|m| m.get("content"))
                    .and_then(Value::as_str)
            })
            .or_else(|| body.get("text").and_then(Value::as_str))
            .or_else(|| body.get("input").and_then(Value::as_str))
            .map(str::to_string);
        Prompt {
            model: body
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_string),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            max_tokens: body.get("max_tokens").and_then(Value::as_u64),
            chars,
            last_user_text: last_user_text.filter(|_| keep_text),
        }
    }

    #[test]
    fn reads_a_chat_request() {
        let body = json!({
            "model": "m", "stream": true, "user": "u", "max_tokens": 300,
            "messages": [
                {"role": "system", "content": "ab"},
                {"role": "user", "content": [{"type": "text", "text": "cd"}, "é"]},
                {"content": "xyz", "role": "user"},
                "not a message",
                {"role": "assistant", "content": {"content": "12"}},
            ],
        });
        let p = read(&serde_json::to_vec(&body).unwrap(), true);
        assert_eq!(
            p,
            Prompt {
                model: Some("m".into()),
                stream: true,
                max_tokens: Some(300),
                chars: 2 + 3 + 3 + 2,
                last_user_text: Some("xyz".into()),
            }
        );
        assert_eq!(p, from_tree(&body, true));
    }

    #[test]
    fn the_last_user_message_decides_even_when_it_is_not_text() {
        let body = json!({"messages": [{"role": "user", "content": "a"},
                                       {"role": "user", "content": ["b"]}], "input": "in"});
        let p = read(&serde_json::to_vec(&body).unwrap(), true);
        assert_eq!(p.last_user_text.as_deref(), Some("in"));
        assert_eq!(p, from_tree(&body, true));
    }

    #[test]
    fn a_role_written_with_escapes_is_read_decoded() {
        let body = br#"{"messages":[{"role":"\u0075ser","content":"hi"},{"role":"us\"er","content":"no"}]}"#;
        let p = read(body, true);
        assert_eq!(p.last_user_text.as_deref(), Some("hi"));
        assert_eq!(p.chars, 4);
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-zé😀\"\\\\ ]{0,6}".prop_map(Value::String),
            Just(json!("user")),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("(role|content|text|type|[a-z]{1,3})", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the shapes, the one-pass reading agrees with the tree's.
        #[test]
        fn agrees_with_the_tree(
            members in prop::collection::btree_map(
                "(model|stream|messages|text|input|user|[a-z]{1,3})", arb_value(), 0..6),
            keep_text in any::<bool>(),
        ) {
            let body = Value::Object(members.into_iter().collect());
            let p = read(&serde_json::to_vec(&body).unwrap(), keep_text);
            prop_assert_eq!(p, from_tree(&body, keep_text));
        }
    }
}
