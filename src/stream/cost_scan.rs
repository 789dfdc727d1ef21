//! The cost fields of a plain JSON answer read as it passes, piece by piece, holding
//! nothing of it but the fields themselves: for answers too large to keep whole. Pure,
//! no I/O. Only top-level members with plain names and scalar values are read; anything
//! else (nested values, strings, escaped names) is stepped over.

use crate::cost::Usage;

/// The names read (upstream's cost and token fields).
const NAMES: [&[u8]; 5] = [
    b"input_tokens",
    b"output_tokens",
    b"input_tokens_cost",
    b"output_tokens_cost",
    b"total_tokens_cost",
];
/// Longer names and values than these are not ours: they are stepped over.
const MAX_NAME: usize = 32;
const MAX_VALUE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before a member's name, at the top level.
    Name,
    InName,
    /// After a name, before its colon.
    Colon,
    /// After the colon, before the value.
    ValueStart,
    /// In a scalar value being read.
    Value,
    /// In anything else: a value stepped over, or outside the top-level object.
    Other,
}

#[derive(Debug)]
pub struct CostScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    phase: Phase,
    name: Vec<u8>,
    name_ok: bool,
    value: Vec<u8>,
    found: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Default for CostScan {
    fn default() -> Self {
        CostScan {
            depth: 0,
            in_string: false,
            escaped: false,
            phase: Phase::Other,
            name: Vec::new(),
            name_ok: false,
            value: Vec::new(),
            found: Vec::new(),
        }
    }
}

impl CostScan {
    pub fn push(&mut self, piece: &[u8]) {
        for &b in piece {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
                // A name spelled with escapes is not one of ours as written.
                self.name_ok &= self.phase != Phase::InName;
            } else if b == b'"' {
                self.in_string = false;
                if self.phase == Phase::InName {
                    self.phase = Phase::Colon;
                }
            } else if self.phase == Phase::InName {
                if self.name.len() < MAX_NAME {
                    self.name.push(b);
                } else {
                    self.name_ok = false;
                }
            }
            return;
        }
        let top = self.depth == 1;
        match b {
            b'"' => {
                self.in_string = true;
                if top && self.phase == Phase::Name {
                    self.phase = Phase::InName;
                    self.name.clear();
                    self.name_ok = true;
                } else if top && self.phase == Phase::ValueStart {
                    self.phase = Phase::Other;
                }
            }
            b'{' | b'[' => {
                if top && self.phase == Phase::ValueStart {
                    self.phase = Phase::Other;
                }
                self.depth += 1;
                if self.depth == 1 && b == b'{' {
                    self.phase = Phase::Name;
                }
            }
            b'}' | b']' => {
                if top {
                    self.end_value();
                }
                self.depth = self.depth.saturating_sub(1);
            }
            b':' if top && self.phase == Phase::Colon => self.phase = Phase::ValueStart,
            b',' if top => {
                self.end_value();
                self.phase = Phase::Name;
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ if top && matches!(self.phase, Phase::ValueStart | Phase::Value) => {
                self.phase = Phase::Value;
                if self.value.len() < MAX_VALUE {
                    self.value.push(b);
                } else {
                    self.name_ok = false;
                }
            }
            _ => {}
        }
    }

    fn end_value(&mut self) {
        if self.phase == Phase::Value && self.name_ok && NAMES.contains(&self.name.as_slice()) {
            self.found.push((
                std::mem::take(&mut self.name),
                std::mem::take(&mut self.value),
            ));
        }
        self.value.clear();
        self.phase = Phase::Other;
    }

    /// The cost fields found, read as upstream's answer would be.
    pub fn usage(&self) -> Option<Usage> {
        if self.found.is_empty() {
            return None;
        }
        let mut text = String::from("{");
        for (i, (name, value)) in self.found.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push('"');
            text.push_str(&String::from_utf8_lossy(name));
            text.push_str("\":");
            text.push_str(&String::from_utf8_lossy(value));
        }
        text.push('}');
        Usage::from_upstream_json(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&[u8]]) -> Option<Usage> {
        let mut s = CostScan::default();
        for p in pieces {
            s.push(p);
        }
        s.usage()
    }

    #[test]
    fn reads_top_level_costs_split_anywhere() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"a \"input_tokens\": 9, {"}}],
            "input_tokens": 12, "output_tokens":30,"input_tokens_cost":0.000360,
            "output_tokens_cost":1.8e-3,"total_tokens_cost":0.002160}"#;
        for split in 0..body.len() {
            let u = scan(&[&body[..split], &body[split..]]).unwrap();
            assert_eq!(u.input_tokens, Some(12), "split at {split}");
            assert_eq!(u.output_tokens, Some(30));
            assert_eq!(u.cost.as_ref().unwrap().get(), "0.002160");
            assert_eq!(u.output_cost.as_ref().unwrap().get(), "1.8e-3");
        }
    }

    #[test]
    fn nested_escaped_and_string_values_are_not_read() {
        let body = br#"{"usage":{"input_tokens":5},"input\u005ftokens":7,"output_tokens":"9"}"#;
        assert!(scan(&[body]).is_none());
        assert!(scan(&[b"[1,2]", b"not json at all"]).is_none());
    }
}
