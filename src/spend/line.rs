//! The ledger line: one JSON object per answered request, its field order, timestamp
//! format, outcome and cost-source enums, and exact (verbatim) JSON numbers for money.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

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

/// Where the cost fields of a line come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CostSource {
    /// Upstream reported the cost (answer body or trailing cost frame).
    Upstream,
    /// Computed from `/models` prices and a character-count token estimate.
    Estimated,
    /// Nothing known.
    Unknown,
}

/// One ledger line. Serialized fields appear in declaration order. The money fields hold
/// the JSON number text exactly as received (never re-formatted through `f64`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerLine {
    #[serde(with = "ts_format")]
    pub ts: OffsetDateTime,
    pub id: String,
    pub project: String,
    /// Keyed fingerprint of the credential (never the credential itself).
    pub key: Option<String>,
    pub endpoint: String,
    pub model: Option<String>,
    pub stream: bool,
    pub outcome: Outcome,
    pub status: u16,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub input_cost: Option<Box<RawValue>>,
    pub output_cost: Option<Box<RawValue>>,
    pub cost: Option<Box<RawValue>>,
    pub saved: Option<Box<RawValue>>,
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
            project: project.to_string(),
            key: None,
            endpoint: endpoint.to_string(),
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
    pub fn set_usage(&mut self, usage: super::Usage, source: CostSource) {
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

/// The value of a raw JSON number, 0 for null or anything that is not a finite number.
pub fn number_f64(raw: Option<&RawValue>) -> f64 {
    raw.and_then(|r| r.get().parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .unwrap_or(0.0)
}

/// The JSON number `0`.
pub fn zero() -> Box<RawValue> {
    static ZERO: OnceLock<Box<RawValue>> = OnceLock::new();
    ZERO.get_or_init(|| {
        // Serializing an integer to JSON cannot fail; the fallback is never taken.
        serde_json::value::to_raw_value(&0u8).unwrap_or_else(|_| RawValue::NULL.to_owned())
    })
    .clone()
}

/// `text` as a raw JSON number if it is one valid JSON number (surrounding whitespace
/// is dropped, nothing else is changed).
pub fn raw_number(text: &str) -> Option<Box<RawValue>> {
    let trimmed = text.trim();
    serde_json::from_str::<serde_json::Number>(trimmed).ok()?;
    RawValue::from_string(trimmed.to_string()).ok()
}

/// "YYYY-MM-DD" (years outside 0..=9999, which only a broken clock gives, are clamped).
pub fn day_string(date: Date) -> String {
    let mut out = String::with_capacity(24);
    push_date(&mut out, date);
    out
}

/// Appends "YYYY-MM-DD": written digit by digit, as it runs for every ledger line.
fn push_date(out: &mut String, date: Date) {
    push_digits(out, date.year().clamp(0, 9999) as u32, 4);
    out.push('-');
    push_digits(out, u32::from(u8::from(date.month())), 2);
    out.push('-');
    push_digits(out, u32::from(date.day()), 2);
}

/// Appends the last `width` decimal digits of `n`, zero-padded.
fn push_digits(out: &mut String, n: u32, width: u32) {
    for i in (0..width).rev() {
        let digit = (n / 10u32.pow(i)) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

/// "YYYY-MM-DDTHH:MM:SS.mmmZ" of `ts` in UTC.
fn timestamp_string(ts: OffsetDateTime) -> String {
    let ts = ts.to_offset(UtcOffset::UTC);
    let mut out = String::with_capacity(24);
    push_date(&mut out, ts.date());
    out.push('T');
    push_digits(&mut out, u32::from(ts.hour()), 2);
    out.push(':');
    push_digits(&mut out, u32::from(ts.minute()), 2);
    out.push(':');
    push_digits(&mut out, u32::from(ts.second()), 2);
    out.push('.');
    push_digits(&mut out, u32::from(ts.millisecond()), 3);
    out.push('Z');
    out
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
    format!("{:016x}", mix64(n))
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
