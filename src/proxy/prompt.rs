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
        let string = |v: &[u8]| serde_json::from_slice::<String>(v).ok();
        let text_len = |v: &[u8]| {
            TextLen
                .deserialize(&mut serde_json::Deserializer::from_slice(v))
                .unwrap_or(0)
        };
        match key {
            "model" => self.read.model = string(value),
            "stream" => self.read.stream = value == b"true",
            "messages" => {
                let m = Messages {
                    keep_text: self.keep_text,
                }
                .deserialize(&mut serde_json::Deserializer::from_slice(value))
                .unwrap_or_default();
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

/// What reading a value found: characters of text, and (for messages) the last user
/// message's content, `Some(None)` if that content is not a string.
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
    Role,
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
                Field::Role | Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(text.or(content).unwrap_or(0))
    }
}

/// A chat request's `messages`: the characters of every message's content, and the last
/// user message's content. Anything but an array counts for nothing.
struct Messages {
    keep_text: bool,
}

impl<'de> DeserializeSeed<'de> for Messages {
    type Value = Read;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Read, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Messages {
    type Value = Read;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Read, E> {
        Ok(Read::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Read, E> {
        Ok(Read::default())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Read, E> {
        Ok(Read::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Read, E> {
        Ok(Read::default())
    }
    fn visit_unit<E>(self) -> Result<Read, E> {
        Ok(Read::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<Read, E> {
        Ok(Read::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Read, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Read::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Read, A::Error> {
        let mut read = Read::default();
        while let Some(m) = seq.next_element_seed(Message {
            keep_text: self.keep_text,
        })? {
            read.chars += m.chars;
            if m.from_user {
                read.last_user_text = Some(m.text);
            }
        }
        Ok(read)
    }
}

/// One message: its content's characters, whether its role is `user`, and its content if
/// that is a string (only when asked for). Anything but an object counts for nothing.
struct Message {
    keep_text: bool,
}

#[derive(Default)]
struct MessageRead {
    chars: usize,
    from_user: bool,
    text: Option<String>,
}

impl<'de> DeserializeSeed<'de> for Message {
    type Value = MessageRead;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<MessageRead, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Message {
    type Value = MessageRead;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<MessageRead, E> {
        Ok(MessageRead::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<MessageRead, E> {
        Ok(MessageRead::default())
    }
    fn visit_u64<E>(self, _: u64) -> Result<MessageRead, E> {
        Ok(MessageRead::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<MessageRead, E> {
        Ok(MessageRead::default())
    }
    fn visit_unit<E>(self) -> Result<MessageRead, E> {
        Ok(MessageRead::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<MessageRead, E> {
        Ok(MessageRead::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MessageRead, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(MessageRead::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MessageRead, A::Error> {
        let mut read = MessageRead::default();
        while let Some(field) = map.next_key()? {
            match field {
                Field::Role => {
                    let raw = map.next_value::<&RawValue>()?.get();
                    // Written plainly almost always; decoded only if it holds an escape.
                    read.from_user = raw == "\"user\""
                        || (raw.contains('\\')
                            && serde_json::from_str::<String>(raw).is_ok_and(|s| s == "user"));
                }
                Field::Content => {
                    let raw = map.next_value::<&RawValue>()?;
                    read.chars = TextLen
                        .deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
                        .map_err(serde::de::Error::custom)?;
                    if self.keep_text {
                        read.text = serde_json::from_str(raw.get()).ok();
                    }
                }
                Field::Text | Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(read)
    }
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
            chars,
            last_user_text: last_user_text.filter(|_| keep_text),
        }
    }

    #[test]
    fn reads_a_chat_request() {
        let body = json!({
            "model": "m", "stream": true, "user": "u",
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
