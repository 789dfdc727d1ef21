//! The fake upstream's credits: a balance that every answered chat request lowers by
//! exactly what it reports costing, or by a multiple of that for a model set to
//! overcharge (a provider whose bill disagrees with its own cost fields).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;

/// The balance a fake upstream starts with, in millionths of a dollar ($1000).
pub const START_MICROS: u64 = 1_000_000_000;

#[derive(Debug)]
pub struct Credits {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    micros: u64,
    overcharge: HashMap<String, u64>,
}

impl Default for Credits {
    fn default() -> Credits {
        Credits {
            state: Mutex::new(State {
                micros: START_MICROS,
                overcharge: HashMap::new(),
            }),
        }
    }
}

impl Credits {
    /// Body of `GET /credits`: `{"credits": 1000}` until something is charged.
    pub fn body(&self) -> String {
        format!(r#"{{"credits": {}}}"#, dollars(self.micros()))
    }

    pub fn micros(&self) -> u64 {
        self.state.lock().unwrap().micros
    }

    /// Lowers the balance for an answer of `model` that reported `micros`.
    pub fn charge(&self, model: &str, micros: u64) {
        let mut s = self.state.lock().unwrap();
        let factor = s.overcharge.get(model).copied().unwrap_or(1);
        s.micros = s.micros.saturating_sub(micros * factor);
    }

    /// From now on, answers of `model` take `factor` times what they report.
    pub fn overcharge(&self, model: &str, factor: u64) {
        self.state
            .lock()
            .unwrap()
            .overcharge
            .insert(model.to_string(), factor);
    }
}

/// Millionths of a dollar as a JSON number: whole dollars without decimals, else up to
/// six decimals without trailing zeros.
fn dollars(micros: u64) -> String {
    let (whole, frac) = (micros / 1_000_000, micros % 1_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}
