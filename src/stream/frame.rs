//! What one event of this API's streams means: a chunk (and how much assistant text it
//! adds), the trailing cost frame, `[DONE]` or an error. Each frame's JSON is read once,
//! in one pass that builds nothing: only the keys that decide are looked at.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::stream::sse::Event;

/// What one event means in this API's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A normal `chat.completion.chunk` (or any other data event that is not one of the below).
    Chunk,
    /// The trailing cost frame: a data JSON object with no `choices` key and at least one of
    /// `input_tokens`, `output_tokens`, `input_tokens_cost`, `output_tokens_cost`, `total_tokens_cost`.
    Cost,
    /// `data: [DONE]`
    Done,
    /// An `event: error` event, or a data JSON object with a top-level `error` key.
    Error,
}

/// One frame read: what it is, and the characters of `choices[*].delta.content` text in it
/// (zero unless it is a chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub frame: Frame,
    pub text_chars: usize,
}

const COST_KEYS: [&str; 5] = [
    "input_tokens",
    "output_tokens",
    "input_tokens_cost",
    "output_tokens_cost",
    "total_tokens_cost",
];

/// Reads one frame: `event_type` is the SSE event's type, `data` one API frame of its data.
pub fn read_frame(event_type: Option<&str>, data: &str) -> Reading {
    let frame = |frame| Reading {
        frame,
        text_chars: 0,
    };
    if event_type == Some("error") {
        return frame(Frame::Error);
    }
    if data.trim() == "[DONE]" {
        return frame(Frame::Done);
    }
    let mut de = serde_json::Deserializer::from_str(data);
    let keys = match de
        .deserialize_map(TopLevel)
        .and_then(|k| de.end().map(|()| k))
    {
        Ok(keys) => keys,
        // Not a JSON object: some other data event.
        Err(_) => return frame(Frame::Chunk),
    };
    if keys.error {
        frame(Frame::Error)
    } else if keys.cost && keys.choices.is_none() {
        frame(Frame::Cost)
    } else {
        Reading {
            frame: Frame::Chunk,
            text_chars: keys.choices.unwrap_or(0),
        }
    }
}

/// The API's own frames inside one SSE event. Upstream's documentation shows `data:` lines
/// with no blank line between them, which SSE joins into one multi-line event; when every
/// line of an event's data is a JSON object or `[DONE]`, each line is taken as its own
/// frame, so frames are read the same whichever way upstream separates them.
pub fn api_frames(event: &Event) -> Vec<&str> {
    let data = event.data.as_str();
    if memchr::memchr(b'\n', data.as_bytes()).is_none() {
        return vec![data];
    }
    let lines: Vec<&str> = data.split('\n').collect();
    let each_is_a_frame = lines.iter().all(|l| {
        let l = l.trim();
        l == "[DONE]" || (l.starts_with('{') && serde_json::from_str::<IgnoredAny>(l).is_ok())
    });
    if each_is_a_frame {
        lines
    } else {
        vec![data]
    }
}

/// The top-level keys that decide what a frame is. A key given twice counts as given;
/// for `choices`, the last one is read, as a JSON object keeps it.
#[derive(Default)]
struct Keys {
    error: bool,
    cost: bool,
    /// Present: the delta text's characters in it.
    choices: Option<usize>,
}

struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = Keys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
        let mut keys = Keys::default();
        while let Some(key) = map.next_key_seed(KeyOf(&TOP_KEYS))? {
            match key {
                Some("choices") => keys.choices = Some(map.next_value_seed(Text(Level::Choices))?),
                Some("error") => {
                    keys.error = true;
                    map.next_value::<IgnoredAny>()?;
                }
                // One of the cost keys.
                Some(_) => {
                    keys.cost = true;
                    map.next_value::<IgnoredAny>()?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(keys)
    }
}

/// `choices`, `error`, then the cost keys.
const TOP_KEYS: [&str; 7] = [
    "choices",
    "error",
    COST_KEYS[0],
    COST_KEYS[1],
    COST_KEYS[2],
    COST_KEYS[3],
    COST_KEYS[4],
];

/// Reads an object key as the one of a list of names it is (None: another key), without
/// copying it.
struct KeyOf<'k>(&'k [&'static str]);

impl<'de> DeserializeSeed<'de> for KeyOf<'_> {
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyOf<'_> {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().find(|name| **name == key).copied())
    }
}

/// Where a value sits on the way to `choices[*].delta.content`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Choices,
    Choice,
    Delta,
    Content,
}

/// Counts the characters of `choices[*].delta.content` strings below a value at `Level`.
/// A value of any other shape counts nothing, as looking it up in a parsed tree would
/// find nothing; it is still read through, so the frame's JSON must be valid.
struct Text(Level);

impl<'de> DeserializeSeed<'de> for Text {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut chars = 0;
        if self.0 == Level::Choices {
            while let Some(n) = seq.next_element_seed(Text(Level::Choice))? {
                chars += n;
            }
        } else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
        }
        Ok(chars)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let (wanted, below) = match self.0 {
            Level::Choice => (Some("delta"), Level::Delta),
            Level::Delta => (Some("content"), Level::Content),
            Level::Choices | Level::Content => (None, Level::Content),
        };
        // A key given twice: the last one counts, as a JSON object keeps it.
        let mut chars = 0;
        while let Some(key) = map.next_key_seed(KeyOf(wanted.as_slice()))? {
            match key {
                Some(_) => chars = map.next_value_seed(Text(below))?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(chars)
    }

    fn visit_str<E>(self, s: &str) -> Result<usize, E> {
        Ok(if self.0 == Level::Content {
            s.chars().count()
        } else {
            0
        })
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CHUNK: &str = r#"{"id": "chatcmpl-9x", "object": "chat.completion.chunk", "created": 1677652288, "model": "MODEL_NAME", "choices": [{"index": 0, "delta": {"content": "Paris"}, "finish_reason": null}]}"#;
    const COST: &str = r#"{"input_tokens": 9, "output_tokens": 4, "input_tokens_cost": 0.000018, "output_tokens_cost": 0.000024, "total_tokens_cost": 0.000042, "total_time_taken": 0.8}"#;

    fn frame(data: &str) -> Frame {
        read_frame(None, data).frame
    }

    fn text_chars(data: &str) -> usize {
        read_frame(None, data).text_chars
    }

    #[test]
    fn frames_are_told_apart() {
        assert_eq!(frame(CHUNK), Frame::Chunk);
        assert_eq!(frame(COST), Frame::Cost);
        assert_eq!(frame(r#"{"total_tokens_cost": 0.1}"#), Frame::Cost);
        assert_eq!(frame("[DONE]"), Frame::Done);
        assert_eq!(frame(" [DONE] "), Frame::Done);
        assert_eq!(
            frame(r#"{"error": {"message": "rate limited"}}"#),
            Frame::Error
        );
        assert_eq!(frame(r#"{"error": null, "input_tokens": 1}"#), Frame::Error);
        assert_eq!(
            read_frame(Some("error"), "upstream failed").frame,
            Frame::Error
        );
        // Usage inside a chunk (it has `choices`) is not the cost frame.
        assert_eq!(frame(r#"{"choices": [], "input_tokens": 3}"#), Frame::Chunk);
        assert_eq!(
            frame(r#"{"input_tokens": 3, "choices": null}"#),
            Frame::Chunk
        );
        // Other data events are chunks.
        for other in [
            "",
            "[DONE",
            "not json",
            "{}",
            r#"{"usage": {"input_tokens": 1}}"#,
            r#"[{"input_tokens": 1}]"#,
            r#"{"input_tokens": 1"#,
            r#"{"input_tokens": 1} x"#,
            r#"{"input_tokens": 1, "x": [1, }"#,
        ] {
            assert_eq!(frame(other), Frame::Chunk, "{other:?}");
        }
    }

    #[test]
    fn keys_are_matched_after_unescaping() {
        assert_eq!(frame(r#"{"\u0065rror": 1}"#), Frame::Error);
        assert_eq!(frame(r#"{"total_tokens\u005fcost": 1}"#), Frame::Cost);
        assert_eq!(
            text_chars(r#"{"choices": [{"d\u0065lta": {"cont\u0065nt": "abc"}}]}"#),
            3
        );
    }

    #[test]
    fn delta_text_is_counted_in_characters() {
        assert_eq!(text_chars(CHUNK), 5);
        assert_eq!(
            text_chars(
                r#"{"choices": [{"delta": {"content": "a\u00e9"}}, {"delta": {}}, {"delta": {"content": null}}, {"delta": {"content": "👋"}}, 7, [], {"delta": [1, {"content": "x"}]}]}"#
            ),
            3
        );
        // The last of a repeated key is the one read, as a parsed object keeps it.
        assert_eq!(
            text_chars(r#"{"choices": [{"delta": {"content": "abcd", "content": "ab"}}]}"#),
            2
        );
        assert_eq!(
            text_chars(r#"{"choices": [{"delta": {"content": "x"}}], "choices": []}"#),
            0
        );
        for other in [
            COST,
            "[DONE]",
            "not json",
            r#"{"choices": {"delta": {"content": "x"}}}"#,
            r#"{"choices": [{"message": {"content": "x"}}]}"#,
            r#"{"choices": [{"delta": {"content": "x"}}], "error": {}}"#,
            r#"{"choices": [{"delta": {"content": "x"}}]"#,
        ] {
            assert_eq!(text_chars(other), 0, "{other:?}");
        }
    }

    /// The same reading made the plain way, from a whole parsed tree.
    fn read_from_tree(data: &str) -> Reading {
        let frame = |frame| Reading {
            frame,
            text_chars: 0,
        };
        if data.trim() == "[DONE]" {
            return frame(Frame::Done);
        }
        let Ok(serde_json::Value::Object(object)) = serde_json::from_str(data) else {
            return frame(Frame::Chunk);
        };
        if object.contains_key("error") {
            return frame(Frame::Error);
        }
        if !object.contains_key("choices") && COST_KEYS.iter().any(|k| object.contains_key(*k)) {
            return frame(Frame::Cost);
        }
        let text_chars = object
            .get("choices")
            .and_then(serde_json::Value::as_array)
            .map_or(0, |choices| {
                choices
                    .iter()
                    .filter_map(|c| c.get("delta")?.get("content")?.as_str())
                    .map(|s| s.chars().count())
                    .sum()
            });
        Reading {
            frame: Frame::Chunk,
            text_chars,
        }
    }

    /// JSON values built from the names a frame reading looks for, nested in every way.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let key = prop::sample::select(vec![
            "choices",
            "delta",
            "content",
            "error",
            "input_tokens",
            "total_tokens_cost",
            "index",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-zé👋 ]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..5).prop_map(|fields| {
                    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    /// Frames shaped as chunks are, around any values: most random trees never reach
    /// `choices[*].delta.content`.
    fn frame_like() -> impl Strategy<Value = serde_json::Value> {
        let delta = json_value().prop_map(|content| serde_json::json!({ "content": content }));
        let choice = prop_oneof![
            json_value(),
            delta.prop_map(|d| serde_json::json!({ "delta": d }))
        ];
        (prop::collection::vec(choice, 0..3), json_value()).prop_map(|(choices, extra)| {
            let mut frame = serde_json::json!({ "choices": choices });
            if let (Some(frame), serde_json::Value::Object(extra)) = (frame.as_object_mut(), extra)
            {
                frame.extend(extra);
            }
            frame
        })
    }

    proptest! {
        #[test]
        fn one_pass_reads_as_the_whole_tree_does(
            value in prop_oneof![json_value(), frame_like()],
            pretty in any::<bool>(),
        ) {
            let data = if pretty {
                serde_json::to_string_pretty(&value)
            } else {
                serde_json::to_string(&value)
            }
            .expect("a value serialises");
            prop_assert_eq!(read_frame(None, &data), read_from_tree(&data));
        }

        #[test]
        fn any_text_reads_as_the_whole_tree_does(data in ".{0,40}") {
            prop_assert_eq!(read_frame(None, &data), read_from_tree(&data));
        }
    }

    fn event(data: &str) -> Event {
        Event {
            event: None,
            data: data.to_owned(),
            id: None,
        }
    }

    #[test]
    fn frames_without_blank_lines_between_them_are_still_told_apart() {
        let joined = event("{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n{\"input_tokens\":1,\"total_tokens_cost\":0.5}\n[DONE]");
        let frames: Vec<Frame> = api_frames(&joined).into_iter().map(frame).collect();
        assert_eq!(frames, vec![Frame::Chunk, Frame::Cost, Frame::Done]);
        let pretty = event("{\n\"a\": 1\n}");
        assert_eq!(
            api_frames(&pretty),
            vec![pretty.data.as_str()],
            "one JSON value over several lines stays one"
        );
        assert_eq!(api_frames(&event(CHUNK)), vec![CHUNK]);
    }
}
