//! What the fake upstream answers: endpoint bodies, token counts, prices and cost numbers.
#![allow(dead_code)]

use serde_json::Value;

/// Exact body of `GET /models`.
pub const MODELS_JSON: &str = r#"{"data":[{"id":"GPT-4 Turbo","inputCost":0.03,"outputCost":0.06},{"id":"Claude 3.5 Sonnet","inputCost":0.002,"outputCost":0.003}]}"#;
/// Exact body of `GET /credits`.
pub const CREDITS_JSON: &str = r#"{"credits": 1000}"#;
/// `created` in every completion and chunk.
pub const CREATED: u64 = 1677652288;

/// Input/output price per token in millionths of a dollar (the per-1K price from
/// `/models` times 1000), so every cost is an exact 6-decimal amount.
pub fn model_prices_micro(model: &str) -> Option<(u64, u64)> {
    match model {
        "GPT-4 Turbo" => Some((30, 60)),
        "Claude 3.5 Sonnet" => Some((2, 3)),
        _ => None,
    }
}

/// Tokens in a text: one per started group of 4 characters.
pub fn token_count(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// A JSON string literal.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

pub fn error_json(status: u16, message: &str) -> String {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        404 => "not_found_error",
        405 => "invalid_request_error",
        429 => "rate_limit_error",
        _ => "server_error",
    };
    format!(
        r#"{{"error": {{"message": {}, "type": "{kind}", "code": {status}}}}}"#,
        quote(message)
    )
}

fn content_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The parts of a chat request the fake cares about.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    /// Sum over messages of `token_count(content) + 1`.
    pub input_tokens: u64,
    /// Content of the last message with role "user" (empty if none).
    pub last_user: String,
}

pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .ok_or("missing \"model\"")?
        .to_string();
    let messages = v
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("missing or empty \"messages\"")?;
    let mut input_tokens = 0;
    let mut last_user = String::new();
    for m in messages {
        let text = content_text(m.get("content"));
        input_tokens += token_count(&text) + 1;
        if m.get("role").and_then(Value::as_str) == Some("user") {
            last_user = text;
        }
    }
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    Ok(ChatRequest {
        model,
        stream,
        input_tokens,
        last_user,
    })
}

/// The reply split into stream pieces: `"écho:"`, then `" word"` per word of the last
/// user message. With `words = Some(n)` exactly n pieces: extra ones are `" café<i>"`,
/// surplus words are merged into the last piece.
pub fn reply_words(last_user: &str, words: Option<usize>) -> Vec<String> {
    let text = format!("écho: {last_user}");
    let mut out: Vec<String> = text
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    if let Some(n) = words {
        let n = n.max(1);
        if out.len() > n {
            let tail = out.split_off(n).concat();
            out[n - 1].push_str(&tail);
        }
        for i in out.len()..n {
            out.push(format!(" café{i}"));
        }
    }
    out
}

/// FNV-1a, so ids are stable across runs and toolchains.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn chat_id(body: &[u8], words: Option<usize>) -> String {
    let mut h = fnv1a(body);
    if let Some(n) = words {
        h = fnv1a(&[h.to_le_bytes(), (n as u64).to_le_bytes()].concat());
    }
    format!("chatcmpl-{h:016x}")
}

fn decimal(units: u64, places: u32) -> String {
    let scale = 10u64.pow(places);
    format!(
        "{}.{:0width$}",
        units / scale,
        units % scale,
        width = places as usize
    )
}

/// The numbers the fake reports for a completion, in the exact text it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedCosts {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// e.g. `"0.000390"`: always 6 decimals, trailing zeros kept.
    pub input_tokens_cost: String,
    pub output_tokens_cost: String,
    pub total_tokens_cost: String,
    /// Seconds, 3 decimals.
    pub total_time_taken: String,
    pub tokens_per_second: String,
    /// Only in the stream's cost frame.
    pub time_to_first_data: String,
    /// Costs in millionths of a dollar.
    pub input_micros: u64,
    pub output_micros: u64,
    pub total_micros: u64,
}

impl ExpectedCosts {
    pub fn compute(model: &str, input_tokens: u64, output_tokens: u64) -> Option<ExpectedCosts> {
        let (pin, pout) = model_prices_micro(model)?;
        let (input_micros, output_micros) = (input_tokens * pin, output_tokens * pout);
        let total_micros = input_micros + output_micros;
        let ms = 200 + 20 * output_tokens;
        Some(ExpectedCosts {
            input_tokens,
            output_tokens,
            input_tokens_cost: decimal(input_micros, 6),
            output_tokens_cost: decimal(output_micros, 6),
            total_tokens_cost: decimal(total_micros, 6),
            total_time_taken: decimal(ms, 3),
            tokens_per_second: decimal(output_tokens * 1_000_000 / ms, 3),
            time_to_first_data: "0.150".to_string(),
            input_micros,
            output_micros,
            total_micros,
        })
    }

    /// `"input_tokens": …, …, "tokens_per_second": …` as written in both response kinds.
    pub fn fields_json(&self) -> String {
        format!(
            r#""input_tokens": {}, "output_tokens": {}, "input_tokens_cost": {}, "output_tokens_cost": {}, "total_tokens_cost": {}, "total_time_taken": {}, "tokens_per_second": {}"#,
            self.input_tokens,
            self.output_tokens,
            self.input_tokens_cost,
            self.output_tokens_cost,
            self.total_tokens_cost,
            self.total_time_taken,
            self.tokens_per_second
        )
    }

    /// Exact JSON text of the stream's trailing cost frame (what follows `data: `).
    pub fn cost_frame_json(&self) -> String {
        format!(
            r#"{{{}, "time_to_first_data": {}}}"#,
            self.fields_json(),
            self.time_to_first_data
        )
    }

    /// The cost frame's fields as a JSON value (numbers as f64).
    pub fn as_value(&self) -> Value {
        serde_json::from_str(&self.cost_frame_json()).expect("cost frame is valid JSON")
    }
}

/// A computed answer to one chat request.
#[derive(Debug, Clone)]
pub struct ChatAnswer {
    pub id: String,
    pub model: String,
    pub words: Vec<String>,
    pub costs: ExpectedCosts,
}

/// Answer for a chat body, or (status, message) for a request the fake rejects
/// (bad JSON, no messages: 400; model not in `/models`: 400).
pub fn answer(body: &[u8], words: Option<usize>) -> Result<ChatAnswer, (u16, String)> {
    let req = parse_chat(body).map_err(|m| (400, m))?;
    let pieces = reply_words(&req.last_user, words);
    let output_tokens = token_count(&pieces.concat());
    let costs = ExpectedCosts::compute(&req.model, req.input_tokens, output_tokens)
        .ok_or_else(|| (400, format!("unknown model {:?}", req.model)))?;
    Ok(ChatAnswer {
        id: chat_id(body, words),
        model: req.model,
        words: pieces,
        costs,
    })
}

impl ChatAnswer {
    pub fn text(&self) -> String {
        self.words.concat()
    }

    /// Body of a non-streaming completion.
    pub fn completion_json(&self, with_cost: bool) -> String {
        let choices = format!(
            r#""id": "{}", "object": "chat.completion", "created": {CREATED}, "model": {}, "choices": [{{"index": 0, "message": {{"role": "assistant", "content": {}}}, "finish_reason": "stop"}}]"#,
            self.id,
            quote(&self.model),
            quote(&self.text()),
        );
        if with_cost {
            format!("{{{choices}, {}}}", self.costs.fields_json())
        } else {
            format!("{{{choices}}}")
        }
    }

    /// Complete SSE frames (`data: …\n\n`): one chunk per word, the cost frame, `[DONE]`.
    pub fn stream_frames(&self, with_cost: bool, with_done: bool) -> Vec<Vec<u8>> {
        let last = self.words.len() - 1;
        let mut frames: Vec<Vec<u8>> = self
            .words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let finish = if i == last { r#""stop""# } else { "null" };
                format!(
                    "data: {{\"id\": \"{}\", \"object\": \"chat.completion.chunk\", \"created\": {CREATED}, \"model\": {}, \"choices\": [{{\"index\": 0, \"delta\": {{\"content\": {}}}, \"finish_reason\": {finish}}}]}}\n\n",
                    self.id,
                    quote(&self.model),
                    quote(w)
                )
                .into_bytes()
            })
            .collect();
        if with_cost {
            frames.push(format!("data: {}\n\n", self.costs.cost_frame_json()).into_bytes());
        }
        if with_done {
            frames.push(b"data: [DONE]\n\n".to_vec());
        }
        frames
    }
}

/// What the fake reports for this chat body (no `x-fake-words`). Panics if the fake would
/// reject the body.
pub fn expected_costs(body: &[u8]) -> ExpectedCosts {
    expected_costs_with_words(body, None)
}

pub fn expected_costs_with_words(body: &[u8], words: Option<usize>) -> ExpectedCosts {
    match answer(body, words) {
        Ok(a) => a.costs,
        Err((status, msg)) => panic!("the fake answers this body with {status}: {msg}"),
    }
}

/// The cost fields (incl. `time_to_first_data`) as a JSON object with f64 numbers.
pub fn expected_cost_fields(body: &[u8]) -> Value {
    expected_costs(body).as_value()
}

/// The assistant text the fake produces for this chat body.
pub fn reply_text(body: &[u8]) -> String {
    reply_text_with_words(body, None)
}

pub fn reply_text_with_words(body: &[u8], words: Option<usize>) -> String {
    match answer(body, words) {
        Ok(a) => a.text(),
        Err((status, msg)) => panic!("the fake answers this body with {status}: {msg}"),
    }
}

fn moderation_result(input: &str) -> String {
    const CATEGORIES: [&str; 11] = [
        "hate",
        "hate/threatening",
        "harassment",
        "harassment/threatening",
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
        "sexual/minors",
        "violence",
        "violence/graphic",
    ];
    let hit = input.to_lowercase().contains("hate");
    let flag = |c: &str| hit && c == "hate";
    let cats: Vec<String> = CATEGORIES
        .iter()
        .map(|c| format!("\"{c}\": {}", flag(c)))
        .collect();
    let scores: Vec<String> = CATEGORIES
        .iter()
        .map(|c| {
            let s = if flag(c) {
                "0.9876543210000000"
            } else {
                "0.0000000000000000"
            };
            format!("\"{c}\": {s}")
        })
        .collect();
    format!(
        r#"{{"categories": {{{}}}, "category_scores": {{{}}}, "flagged": {hit}}}"#,
        cats.join(", "),
        scores.join(", ")
    )
}

/// Body for `POST /moderate`: one result per input string; flagged ("hate") iff the
/// input contains "hate" (any case).
pub fn moderation_json(body: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let inputs: Vec<&str> = match v.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err("missing \"input\"".into()),
    };
    let results: Vec<String> = inputs.iter().map(|i| moderation_result(i)).collect();
    Ok(format!(r#"{{"results": [{}]}}"#, results.join(", ")))
}

/// Body for `POST /tokens`.
pub fn tokens_json(body: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let text = v
        .get("text")
        .and_then(Value::as_str)
        .ok_or("missing \"text\"")?;
    Ok(format!(r#"{{"tokens": {}}}"#, token_count(text)))
}
