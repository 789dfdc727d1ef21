//! Money and what it is made of: verbatim JSON amounts, token counts and cost fields read
//! from an upstream answer (or a stream's cost frame), `/models` prices and the estimate
//! made from them when upstream reported none. Value types only: cache, spend and proxy
//! all use them.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The value of a raw JSON number, 0 for null or anything that is not a finite number.
pub fn number_f64(raw: Option<&RawValue>) -> f64 {
    raw.and_then(|r| r.get().parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .unwrap_or(0.0)
}

/// An amount of money: the JSON number text exactly as upstream sent it. Shared, not
/// copied: a cache entry, every line that replays it and the metrics hold one text.
pub type Money = Arc<RawValue>;

/// The JSON number `0`.
pub fn zero() -> Money {
    static ZERO: OnceLock<Money> = OnceLock::new();
    ZERO.get_or_init(|| {
        // Serializing an integer to JSON cannot fail; the fallback is never taken.
        serde_json::value::to_raw_value(&0u8)
            .unwrap_or_else(|_| RawValue::NULL.to_owned())
            .into()
    })
    .clone()
}

/// `text` as a raw JSON number if it is one valid JSON number (surrounding whitespace
/// is dropped, nothing else is changed).
pub fn raw_number(text: &str) -> Option<Money> {
    let trimmed = text.trim();
    serde_json::from_str::<serde_json::Number>(trimmed).ok()?;
    RawValue::from_string(trimmed.to_string())
        .ok()
        .map(Money::from)
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

impl CostSource {
    /// The ledger text.
    pub fn as_str(self) -> &'static str {
        match self {
            CostSource::Upstream => "upstream",
            CostSource::Estimated => "estimated",
            CostSource::Unknown => "unknown",
        }
    }
}

/// Tokens and money for one answer. Money fields are JSON number text, kept verbatim.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub input_cost: Option<Money>,
    pub output_cost: Option<Money>,
    pub cost: Option<Money>,
}

#[derive(Deserialize)]
struct UpstreamFields {
    #[serde(default)]
    input_tokens: Option<Box<RawValue>>,
    #[serde(default)]
    output_tokens: Option<Box<RawValue>>,
    #[serde(default)]
    input_tokens_cost: Option<Box<RawValue>>,
    #[serde(default)]
    output_tokens_cost: Option<Box<RawValue>>,
    #[serde(default)]
    total_tokens_cost: Option<Box<RawValue>>,
}

impl Usage {
    /// Reads `input_tokens`, `output_tokens`, `input_tokens_cost`, `output_tokens_cost`
    /// and `total_tokens_cost` from a JSON object: a whole non-streaming answer body, or
    /// the data of a stream's trailing cost frame. `None` if `text` is not a JSON object
    /// or carries none of those fields.
    ///
    /// Money is kept as the exact number text upstream sent. A number sent as a JSON
    /// string (`"0.001"`) is accepted and stored as the number inside it; anything else
    /// that is not a number counts as absent. Token counts must be non-negative integers
    /// (`12` or `12.0`).
    pub fn from_upstream_json(text: &str) -> Option<Usage> {
        Usage::from_upstream_reader(text.as_bytes())
    }

    /// `from_upstream_json` of JSON read as it comes: nothing of it is kept but the fields.
    pub fn from_upstream_reader(mut json: impl std::io::BufRead) -> Option<Usage> {
        // serde would also read a struct from a JSON array, positionally: an object only.
        loop {
            let buf = json.fill_buf().ok()?;
            if buf.is_empty() {
                return None;
            }
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(at) if buf[at] == b'{' => {
                    json.consume(at);
                    break;
                }
                Some(_) => return None,
                None => {
                    let n = buf.len();
                    json.consume(n);
                }
            }
        }
        let f: UpstreamFields = serde_json::from_reader(json).ok()?;
        let usage = Usage {
            input_tokens: f.input_tokens.as_deref().and_then(token_count),
            output_tokens: f.output_tokens.as_deref().and_then(token_count),
            input_cost: f.input_tokens_cost.as_deref().and_then(money),
            output_cost: f.output_tokens_cost.as_deref().and_then(money),
            cost: f.total_tokens_cost.as_deref().and_then(money),
        };
        let any = usage.input_tokens.is_some()
            || usage.output_tokens.is_some()
            || usage.input_cost.is_some()
            || usage.output_cost.is_some()
            || usage.cost.is_some();
        any.then_some(usage)
    }

    /// The source to record for a `Usage` read from upstream: `upstream` when the total
    /// cost is present, otherwise `unknown` (the caller may estimate instead).
    pub fn upstream_source(&self) -> CostSource {
        if self.cost.is_some() {
            CostSource::Upstream
        } else {
            CostSource::Unknown
        }
    }
}

fn token_count(raw: &RawValue) -> Option<u64> {
    let text = raw.get();
    if let Ok(n) = text.parse::<u64>() {
        return Some(n);
    }
    let v = text.parse::<f64>().ok()?;
    // Integral, non-negative and exactly representable: the cast is lossless.
    (v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= 9.0e15).then_some(v as u64)
}

fn money(raw: &RawValue) -> Option<Money> {
    let text = raw.get();
    if text.starts_with('"') {
        let inner: String = serde_json::from_str(text).ok()?;
        return raw_number(&inner);
    }
    raw_number(text)
}

/// Per-model prices from a `GET /models` answer: model id → (input, output) price per
/// 1,000 tokens (the API documents `inputCost`/`outputCost` without a unit; we assume
/// per 1K tokens, as the listed values only make sense that way).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices {
    by_model: BTreeMap<String, (f64, f64)>,
}

#[derive(Deserialize)]
struct ModelsAnswer {
    data: Vec<serde_json::Value>,
}

impl Prices {
    /// Parses `{"data":[{"id":..,"inputCost":..,"outputCost":..}, ..]}`. Entries without a
    /// string id or a finite non-negative price for both directions are skipped. `None`
    /// if the body has another shape or no usable entry.
    pub fn from_models_json(body: &[u8]) -> Option<Prices> {
        let answer: ModelsAnswer = serde_json::from_slice(body).ok()?;
        let mut by_model = BTreeMap::new();
        for entry in &answer.data {
            let id = entry.get("id").and_then(|v| v.as_str());
            let input = entry.get("inputCost").and_then(price);
            let output = entry.get("outputCost").and_then(price);
            if let (Some(id), Some(input), Some(output)) = (id, input, output) {
                by_model.insert(id.to_string(), (input, output));
            }
        }
        (!by_model.is_empty()).then_some(Prices { by_model })
    }

    /// (input, output) price per 1K tokens.
    pub fn get(&self, model: &str) -> Option<(f64, f64)> {
        self.by_model.get(model).copied()
    }

    pub fn len(&self) -> usize {
        self.by_model.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }
}

fn price(v: &serde_json::Value) -> Option<f64> {
    let p = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (p.is_finite() && p >= 0.0).then_some(p)
}

/// Estimates usage when upstream reported no cost.
///
/// Assumptions: one token per 4 characters of text, rounded up (`chars.div_ceil(4)`);
/// prices are per 1,000 tokens; the money is rounded to 12 decimal places to drop float
/// noise. With no price for `model`, nothing is known: every field is null and the source
/// is `unknown`.
pub fn estimate(
    prices: Option<&Prices>,
    model: &str,
    input_chars: usize,
    output_chars: usize,
) -> (Usage, CostSource) {
    let Some((in_price, out_price)) = prices.and_then(|p| p.get(model)) else {
        return (Usage::default(), CostSource::Unknown);
    };
    let input_tokens = input_chars.div_ceil(4) as u64;
    let output_tokens = output_chars.div_ceil(4) as u64;
    let input_cost = round12(input_tokens as f64 * in_price / 1000.0);
    let output_cost = round12(output_tokens as f64 * out_price / 1000.0);
    let usage = Usage {
        input_tokens: Some(input_tokens),
        output_tokens: Some(output_tokens),
        input_cost: money_from_f64(input_cost),
        output_cost: money_from_f64(output_cost),
        cost: money_from_f64(round12(input_cost + output_cost)),
    };
    (usage, CostSource::Estimated)
}

/// The most a request can cost: its prompt at one token a character (no tokenizer makes
/// fewer characters of a token) and all of its `max_tokens`, at `/models` prices. `None`
/// when either is unknown.
pub fn worst_case(
    prices: Option<&Prices>,
    model: &str,
    input_chars: usize,
    max_tokens: Option<u64>,
) -> Option<f64> {
    let (in_price, out_price) = prices.and_then(|p| p.get(model))?;
    let max_tokens = max_tokens?;
    Some((input_chars as f64 * in_price + max_tokens as f64 * out_price) / 1000.0)
}

fn round12(v: f64) -> f64 {
    (v * 1e12).round() / 1e12
}

fn money_from_f64(v: f64) -> Option<Money> {
    if !v.is_finite() {
        return None;
    }
    serde_json::value::to_raw_value(&v).ok().map(Money::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_upstream_cost_fields_verbatim() {
        let body = r#"{"id":"x","choices":[],"input_tokens":12,"output_tokens":7,
            "input_tokens_cost":0.000024,"output_tokens_cost": 9.0e-5 ,
            "total_tokens_cost":0.000114,"total_time_taken":1.2}"#;
        let u = Usage::from_upstream_json(body).unwrap();
        assert_eq!(u.input_tokens, Some(12));
        assert_eq!(u.output_tokens, Some(7));
        assert_eq!(u.input_cost.unwrap().get(), "0.000024");
        assert_eq!(u.output_cost.unwrap().get(), "9.0e-5");
        assert_eq!(u.cost.as_ref().unwrap().get(), "0.000114");
        let u = Usage::from_upstream_json(body).unwrap();
        assert_eq!(u.upstream_source(), CostSource::Upstream);
    }

    #[test]
    fn cost_frame_without_total_is_not_upstream_costed() {
        let u = Usage::from_upstream_json(r#"{"input_tokens":3,"output_tokens":"x"}"#).unwrap();
        assert_eq!(u.input_tokens, Some(3));
        assert_eq!(u.output_tokens, None);
        assert_eq!(u.upstream_source(), CostSource::Unknown);
        assert!(Usage::from_upstream_json(r#"{"choices":[]}"#).is_none());
        assert!(Usage::from_upstream_json("[1,2]").is_none());
        assert!(Usage::from_upstream_json("not json").is_none());
        let u = Usage::from_upstream_json(r#"{"total_tokens_cost":"0.5"}"#).unwrap();
        assert_eq!(u.cost.unwrap().get(), "0.5");
    }

    const MODELS: &[u8] = br#"{"data":[
        {"id":"GPT-4 Turbo","inputCost":0.03,"outputCost":0.06},
        {"id":"cheap","inputCost":0.002,"outputCost":0.003},
        {"id":"broken","inputCost":"n/a"}]}"#;

    #[test]
    fn prices_from_models_answer() {
        let p = Prices::from_models_json(MODELS).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.get("GPT-4 Turbo"), Some((0.03, 0.06)));
        assert_eq!(p.get("broken"), None);
        assert!(Prices::from_models_json(b"{\"data\":[]}").is_none());
        assert!(Prices::from_models_json(b"<html>").is_none());
    }

    #[test]
    fn estimate_uses_prices_per_thousand_tokens() {
        let p = Prices::from_models_json(MODELS).unwrap();
        // 4000 chars → 1000 tokens; 401 chars → 101 tokens (rounded up).
        let (u, source) = estimate(Some(&p), "GPT-4 Turbo", 4000, 401);
        assert_eq!(source, CostSource::Estimated);
        assert_eq!(u.input_tokens, Some(1000));
        assert_eq!(u.output_tokens, Some(101));
        assert_eq!(u.input_cost.unwrap().get(), "0.03");
        assert_eq!(u.output_cost.unwrap().get(), "0.00606");
        assert_eq!(u.cost.unwrap().get(), "0.03606");
    }

    #[test]
    fn estimate_for_unknown_model_or_no_prices_is_unknown() {
        let p = Prices::from_models_json(MODELS).unwrap();
        for (prices, model) in [(Some(&p), "nope"), (None, "GPT-4 Turbo")] {
            let (u, source) = estimate(prices, model, 100, 100);
            assert_eq!(source, CostSource::Unknown);
            assert!(u.cost.is_none() && u.input_cost.is_none() && u.output_cost.is_none());
            assert!(u.input_tokens.is_none() && u.output_tokens.is_none());
        }
    }
}
