//! Streamed (SSE) answers: parsing, tee to clients while recording, and replay.

pub mod replay;
pub mod sse;
pub mod tee;
