//! What a JSON request body says: its canonical reading (for the cache key), model, stream
//! flag and prompt, and the memo of bodies already read.

pub mod json;
pub mod keyed;
pub mod prompt;
