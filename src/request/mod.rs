//! A request's body: read under its limit, and what it says as JSON (its canonical reading
//! for the cache key, model, stream flag and prompt), with the memo of bodies already read.

pub mod json;
pub mod keyed;
pub mod prompt;
pub mod read;
