//! The ledger line: one JSON object per answered request, its field order, timestamp
//! format, outcome and cost-source enums, and exact (verbatim) JSON numbers for money.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::cost::{number_f64, CostSource, Money};

/// How a request was answered (mirrors the `x-chatcache` response header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Hit,
    Miss,
    Coalesced,
    Refresh,
    Bypass,
}

impl Outcome {
    /// The `x-chatcache` header value and ledger text.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Refresh => "refresh",
            Outcome::Bypass => "bypass",
        }
    }

    /// True when this request made its own upstream call.
    pub fn went_upstream(self) -> bool {
        matches!(self, Outcome::Miss | Outcome::Refresh | Outcome::Bypass)
    }
}

/// One ledger line. Serialized fields appear in declaration order. The money fields hold
/// the JSON number text exactly as received (never re-formatted through `f64`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerLine {
    #[serde(with = "ts_format")]
    pub ts: OffsetDateTime,
    pub id: String,
    // Shared with the request that made the line (and `endpoint` is a constant), so a line
    // costs no copies of them.
    pub project: Arc<str>,
    /// Keyed fingerprint of the credential (never the credential itself).
    pub key: Option<Arc<str>>,
    pub endpoint: Cow<'static, str>,
    pub model: Option<Arc<str>>,
    pub stream: bool,
    pub outcome: Outcome,
    pub status: u16,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub input_cost: Option<Money>,
    pub output_cost: Option<Money>,
    pub cost: Option<Money>,
    pub saved: Option<Money>,
    pub cost_source: CostSource,
    pub upstream_ms: Option<u64>,
    pub ttfb_ms: Option<u64>,
    /// The upstream answer broke before its end.
    #[serde(default)]
    pub incomplete: bool,
}

impl LedgerLine {
    /// A line stamped now with a fresh id; every optional field null, cost unknown.
    pub fn new(project: &str, endpoint: &str, outcome: Outcome, status: u16) -> LedgerLine {
        LedgerLine {
            ts: OffsetDateTime::now_utc(),
            id: new_id(),
            project: Arc::from(project),
            key: None,
            endpoint: Cow::Owned(endpoint.to_string()),
            model: None,
            stream: false,
            outcome,
            status,
            input_tokens: None,
            output_tokens: None,
            input_cost: None,
            output_cost: None,
            cost: None,
            saved: None,
            cost_source: CostSource::Unknown,
            upstream_ms: None,
            ttfb_ms: None,
            incomplete: false,
        }
    }

    /// Copies tokens and cost fields from `usage`, with the given source.
    pub fn set_usage(&mut self, usage: crate::cost::Usage, source: CostSource) {
        self.input_tokens = usage.input_tokens;
        self.output_tokens = usage.output_tokens;
        self.input_cost = usage.input_cost;
        self.output_cost = usage.output_cost;
        self.cost = usage.cost;
        self.cost_source = source;
    }

    /// UTC calendar day of `ts`, "YYYY-MM-DD".
    pub fn day(&self) -> String {
        day_string(self.utc_date())
    }

    /// The UTC date of `ts`.
    pub fn utc_date(&self) -> Date {
        self.ts.to_offset(UtcOffset::UTC).date()
    }

    /// `cost` as a number for sums (null or non-numeric → 0).
    pub fn cost_f64(&self) -> f64 {
        number_f64(self.cost.as_deref())
    }

    /// `saved` as a number for sums (null or non-numeric → 0).
    pub fn saved_f64(&self) -> f64 {
        number_f64(self.saved.as_deref())
    }
}

impl LedgerLine {
    /// Appends the line as JSON, byte for byte what its `Serialize` derive gives (a test
    /// holds the two together). Written out by hand because it runs for every request:
    /// the field names are constant text, and only the few free-text strings are checked
    /// for characters to escape.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":\"");
        push_timestamp(out, self.ts);
        out.extend_from_slice(b"\",\"id\":");
        json_str(out, &self.id);
        out.extend_from_slice(b",\"project\":");
        json_str(out, &self.project);
        out.extend_from_slice(b",\"key\":");
        json_opt_str(out, self.key.as_deref());
        out.extend_from_slice(b",\"endpoint\":");
        json_str(out, &self.endpoint);
        out.extend_from_slice(b",\"model\":");
        json_opt_str(out, self.model.as_deref());
        out.extend_from_slice(b",\"stream\":");
        json_bool(out, self.stream);
        out.extend_from_slice(b",\"outcome\":");
        json_str(out, self.outcome.as_str());
        out.extend_from_slice(b",\"status\":");
        json_uint(out, Some(u64::from(self.status)));
        out.extend_from_slice(b",\"input_tokens\":");
        json_uint(out, self.input_tokens);
        out.extend_from_slice(b",\"output_tokens\":");
        json_uint(out, self.output_tokens);
        out.extend_from_slice(b",\"input_cost\":");
        json_raw(out, self.input_cost.as_deref());
        out.extend_from_slice(b",\"output_cost\":");
        json_raw(out, self.output_cost.as_deref());
        out.extend_from_slice(b",\"cost\":");
        json_raw(out, self.cost.as_deref());
        out.extend_from_slice(b",\"saved\":");
        json_raw(out, self.saved.as_deref());
        out.extend_from_slice(b",\"cost_source\":");
        json_str(out, self.cost_source.as_str());
        out.extend_from_slice(b",\"upstream_ms\":");
        json_uint(out, self.upstream_ms);
        out.extend_from_slice(b",\"ttfb_ms\":");
        json_uint(out, self.ttfb_ms);
        out.extend_from_slice(b",\"incomplete\":");
        json_bool(out, self.incomplete);
        out.push(b'}');
    }
}

/// A JSON string: as it is when nothing in it needs escaping, else through serde_json.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Every byte is looked at, with no early exit, so the check runs many bytes at a time:
    // the strings are short and nearly never need escaping.
    let needs_escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        // Writing a str into a Vec cannot fail; keep the line valid JSON regardless.
        out.extend_from_slice(b"null");
    }
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_uint(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_raw(out: &mut Vec<u8>, raw: Option<&RawValue>) {
    out.extend_from_slice(raw.map_or("null", RawValue::get).as_bytes());
}

fn json_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// "YYYY-MM-DD" (years outside 0..=9999, which only a broken clock gives, are clamped).
pub fn day_string(date: Date) -> String {
    let mut out = Vec::with_capacity(10);
    push_date(&mut out, date);
    ascii_string(out)
}

/// Appends "YYYY-MM-DD": written digit by digit, as it runs for every ledger line.
fn push_date(out: &mut Vec<u8>, date: Date) {
    push_digits(out, date.year().clamp(0, 9999) as u32, 4);
    out.push(b'-');
    push_digits(out, u32::from(u8::from(date.month())), 2);
    out.push(b'-');
    push_digits(out, u32::from(date.day()), 2);
}

/// Appends the last `width` decimal digits of `n`, zero-padded.
fn push_digits(out: &mut Vec<u8>, n: u32, width: u32) {
    for i in (0..width).rev() {
        let digit = (n / 10u32.pow(i)) % 10;
        out.push(b'0' + digit as u8);
    }
}

/// Appends "YYYY-MM-DDTHH:MM:SS.mmmZ" of `ts` in UTC.
fn push_timestamp(out: &mut Vec<u8>, ts: OffsetDateTime) {
    let ts = ts.to_offset(UtcOffset::UTC);
    push_date(out, ts.date());
    out.push(b'T');
    push_digits(out, u32::from(ts.hour()), 2);
    out.push(b':');
    push_digits(out, u32::from(ts.minute()), 2);
    out.push(b':');
    push_digits(out, u32::from(ts.second()), 2);
    out.push(b'.');
    push_digits(out, u32::from(ts.millisecond()), 3);
    out.push(b'Z');
}

/// "YYYY-MM-DDTHH:MM:SS.mmmZ" of `ts` in UTC.
pub(crate) fn timestamp_string(ts: OffsetDateTime) -> String {
    let mut out = Vec::with_capacity(24);
    push_timestamp(&mut out, ts);
    ascii_string(out)
}

/// Digits and punctuation written above are ASCII, so always UTF-8: the fallback (an empty
/// string) is never taken.
fn ascii_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_default()
}

/// Parses "YYYY-MM-DD".
pub fn parse_day(text: &str) -> Option<Date> {
    const FMT: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");
    Date::parse(text, FMT).ok()
}

/// 16 hex characters, unique per line: a per-process random start (from the OS, or from
/// the clock and process id if that fails) plus a counter, passed through a bijective
/// mixer so ids look random. One OS call per process, not per line.
pub fn new_id() -> String {
    static START: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            let mut h = blake3::Hasher::new();
            h.update(
                &OffsetDateTime::now_utc()
                    .unix_timestamp_nanos()
                    .to_le_bytes(),
            );
            h.update(&std::process::id().to_le_bytes());
            bytes.copy_from_slice(&h.finalize().as_bytes()[..8]);
        }
        u64::from_le_bytes(bytes)
    });
    let n = start.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
    hex16(mix64(n))
}

/// `{:016x}` without the formatting machinery (this runs for every ledger line).
fn hex16(v: u64) -> String {
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = b"0123456789abcdef"[((v >> ((15 - i) * 4)) & 0xf) as usize];
    }
    // Hex digits are ASCII, so this never falls back.
    String::from_utf8(digits.to_vec()).unwrap_or_default()
}

/// SplitMix64's finaliser: a bijection on u64, so distinct inputs give distinct ids.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// RFC 3339 in UTC with exactly three fractional digits: "2026-11-25T04:28:45.123Z".
/// Any RFC 3339 text is accepted when reading.
mod ts_format {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::{OffsetDateTime, UtcOffset};

    pub fn serialize<S: Serializer>(ts: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::timestamp_string(*ts))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339)
            .map(|t| t.to_offset(UtcOffset::UTC))
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::{raw_number, zero};
    use proptest::prelude::*;

    fn outcome_of(i: u8) -> Outcome {
        [
            Outcome::Hit,
            Outcome::Miss,
            Outcome::Coalesced,
            Outcome::Refresh,
            Outcome::Bypass,
        ][usize::from(i % 5)]
    }

    fn source_of(i: u8) -> CostSource {
        [
            CostSource::Upstream,
            CostSource::Estimated,
            CostSource::Unknown,
        ][usize::from(i % 3)]
    }

    fn raw_of(n: Option<f64>) -> Option<Money> {
        n.map(|v| serde_json::value::to_raw_value(&v).unwrap().into())
    }

    proptest! {
        #[test]
        fn the_hand_written_line_is_byte_for_byte_the_derived_one(
            nanos in 0i128..4_000_000_000_000_000_000,
            project in any::<String>(),
            key in proptest::option::of("[ -~]{0,40}"),
            endpoint in any::<String>(),
            model in proptest::option::of(any::<String>()),
            flags in any::<(bool, bool, u8, u8)>(),
            status in any::<u16>(),
            tokens in any::<(Option<u64>, Option<u64>, Option<u64>, Option<u64>)>(),
            costs in any::<(Option<f64>, Option<f64>, Option<f64>, Option<f64>)>(),
        ) {
            let mut line = LedgerLine::new(&project, &endpoint, outcome_of(flags.2), status);
            line.ts = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
            line.key = key.map(Arc::from);
            line.model = model.map(Arc::from);
            line.stream = flags.0;
            line.incomplete = flags.1;
            line.cost_source = source_of(flags.3);
            (line.input_tokens, line.output_tokens, line.upstream_ms, line.ttfb_ms) = tokens;
            line.input_cost = raw_of(costs.0);
            line.output_cost = raw_of(costs.1);
            line.cost = raw_of(costs.2);
            line.saved = raw_of(costs.3);
            let mut ours = Vec::new();
            line.write_json(&mut ours);
            prop_assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&line).unwrap()
            );
        }
    }

    #[test]
    fn strings_that_need_escaping_are_escaped() {
        let mut line = LedgerLine::new("a\"b\\c\n\u{1}é", "/x", Outcome::Hit, 200);
        line.model = Some("\t".into());
        let mut ours = Vec::new();
        line.write_json(&mut ours);
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            serde_json::to_string(&line).unwrap()
        );
        let back: LedgerLine =
            serde_json::from_str(&serde_json::to_string(&line).unwrap()).unwrap();
        assert_eq!(back.project, line.project);
    }

    #[test]
    fn timestamps_and_days_format_as_the_time_crate_does() {
        let fmt = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let mut nanos: i128 = 1_700_000_000_123_456_789;
        for step in 0..2000i128 {
            nanos += step * 7_919_000_013_337 + 999_999;
            let ts = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
            assert_eq!(timestamp_string(ts), ts.format(fmt).unwrap());
            let day = ts.date();
            assert_eq!(
                day_string(day),
                day.format(format_description!("[year]-[month]-[day]"))
                    .unwrap()
            );
        }
        let offset = OffsetDateTime::from_unix_timestamp(0)
            .unwrap()
            .to_offset(UtcOffset::from_hms(5, 30, 0).unwrap());
        assert_eq!(timestamp_string(offset), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn hex16_writes_what_the_formatter_would() {
        for v in [0, 1, 0xf, 0x10, 0xdead_beef, u64::MAX, 1 << 63, mix64(42)] {
            assert_eq!(hex16(v), format!("{v:016x}"));
        }
    }

    #[test]
    fn ids_are_distinct_hex_of_fixed_width() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids
            .iter()
            .all(|i| i.len() == 16 && i.bytes().all(|b| b.is_ascii_hexdigit())));
        assert_ne!(
            mix64(1),
            1 + mix64(0),
            "consecutive counters do not look sequential"
        );
    }

    #[test]
    fn served_without_upstream_costs_zero_and_saves_the_recorded_cost() {
        let recorded = raw_number("1.10e-5").unwrap();
        let mut l = LedgerLine::new("a", "/chat/completions", Outcome::Hit, 200);
        l.cost = Some(zero());
        l.saved = Some(recorded);
        let json = serde_json::to_string(&l).unwrap();
        assert!(json.contains(r#""cost":0,"saved":1.10e-5,"#), "{json}");
        assert_eq!(l.id.len(), 16);
        assert_ne!(l.id, new_id());
        assert!(raw_number("\"1\"").is_none() && raw_number("1e").is_none());
        assert_eq!(
            parse_day("2026-02-03").map(day_string).as_deref(),
            Some("2026-02-03")
        );
    }
}
