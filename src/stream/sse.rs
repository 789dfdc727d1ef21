//! Incremental server-sent-events parser: pure, no I/O. (Interface stub.)

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

#[derive(Debug, Default)]
pub struct SseParser;

impl SseParser {
    pub fn new() -> Self {
        SseParser
    }
    pub fn push(&mut self, _chunk: &[u8], _out: &mut Vec<Event>) {}
    pub fn finish(&mut self) -> Option<Event> {
        None
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Chunk,
    Cost,
    Done,
    Error,
}

pub fn classify(_event: &Event) -> Frame {
    Frame::Chunk
}

pub fn delta_text(_event: &Event) -> String {
    String::new()
}
