//! Shared integration-test support: an in-process fake of the upstream chat API.
#![allow(dead_code, unused_imports)]

pub mod api;
pub mod daemon;
pub mod fake_upstream;
pub mod faults;
pub mod h2;
pub mod hold;
pub mod http1;
pub mod respond;
pub mod skip;
pub mod tls;

pub use api::{
    expected_cost_fields, expected_costs, expected_costs_with_words, reply_text,
    reply_text_with_words, ExpectedCosts, MODELS_JSON,
};
pub use fake_upstream::{FakeUpstream, Recorded, DEFAULT_FRAME_DELAY_MS};
pub use faults::{Fault, FAULT_HEADER, WORDS_HEADER};
pub use tls::TestCa;
