//! Incremental server-sent-events parser (pure, no I/O) and the meaning of this API's stream events.
//!
//! [`SseParser`] follows the WHATWG "event stream interpretation" rules: lines end with CRLF, LF
//! or a lone CR (a CR at the end of one chunk and an LF at the start of the next are one line end),
//! a leading BOM is dropped, lines starting with `:` are comments, a field value loses one leading
//! space, `data` lines are joined with `\n`, and a blank line dispatches the event. Bytes may be
//! split anywhere between calls to [`SseParser::push`]; each complete line is decoded as UTF-8,
//! replacing invalid sequences. The parser keeps only the current incomplete line and the fields of
//! the event being built.

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, `None` when absent or empty (the default "message" type).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last event ID at dispatch time (it carries over to later events, as in the SSE spec);
    /// `None` when no `id:` was seen or it was reset to empty.
    pub id: Option<String>,
}

/// Incremental SSE parser; feed it body bytes with [`SseParser::push`].
#[derive(Debug)]
pub struct SseParser {
    /// Most bytes of one event kept (a line being read and the data so far); a larger
    /// event is stepped over whole.
    limit: usize,
    /// The line being read, or the event being built, went past `limit`.
    line_too_long: bool,
    event_too_long: bool,
    /// Bytes of the current line whose line end has not arrived yet.
    line: Vec<u8>,
    /// The previous chunk ended with a CR, so an LF starting the next chunk belongs to it.
    after_cr: bool,
    /// The first line has been seen (a BOM is only stripped from it).
    started: bool,
    /// Event type buffer.
    event: String,
    /// Data buffer: every `data` value followed by `\n`; empty means "no data yet".
    data: String,
    /// Last event ID buffer.
    id: String,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::with_limit(usize::MAX)
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser that steps over events larger than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        SseParser {
            limit,
            line_too_long: false,
            event_too_long: false,
            line: Vec::new(),
            after_cr: false,
            started: false,
            event: String::new(),
            data: String::new(),
            id: String::new(),
        }
    }

    /// Feeds the next piece of the body; pushes every event completed by it onto `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Event>) {
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(end) = memchr::memchr2(b'\n', b'\r', rest) {
            if std::mem::take(&mut self.line_too_long) {
                self.line.clear();
                self.event_too_long = true;
            } else if self.line.is_empty() {
                self.process_line(&rest[..end], out);
            } else {
                self.line.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, out);
                // Give the allocation back so long streams do not reallocate per line.
                self.line = line;
                self.line.clear();
            }
            let is_cr = rest[end] == b'\r';
            rest = &rest[end + 1..];
            if is_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        if self.line.len() + rest.len() > self.limit {
            self.line_too_long = true;
            self.line.clear();
        }
        if !self.line_too_long {
            self.line.extend_from_slice(rest);
        }
    }

    /// The body ended: returns the event left without its terminating blank line, if it has data
    /// (upstreams that stop without a final blank line still delivered it).
    ///
    /// A last line without a line end is taken as a complete line. The parser is reset afterwards.
    pub fn finish(&mut self) -> Option<Event> {
        let line = std::mem::take(&mut self.line);
        let mut ignored = Vec::new();
        if std::mem::take(&mut self.line_too_long) {
            self.event_too_long = true;
        } else if !line.is_empty() {
            // Only an empty line dispatches; a line that is just the BOM can only be the first
            // line, before any data. So `ignored` stays empty.
            self.process_line(&line, &mut ignored);
        }
        let event = self.take_event();
        *self = Self::with_limit(self.limit);
        event
    }

    fn process_line(&mut self, mut line: &[u8], out: &mut Vec<Event>) {
        if !self.started {
            self.started = true;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() {
            out.extend(self.take_event());
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return, // comment
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        // `:` and ` ` are ASCII, so decoding the value alone equals decoding the whole line.
        match name {
            b"data" if self.data.len() + value.len() >= self.limit => {
                self.event_too_long = true;
                self.data.clear();
            }
            b"data" if !self.event_too_long => {
                push_lossy(&mut self.data, value);
                self.data.push('\n');
            }
            b"event" => {
                self.event.clear();
                push_lossy(&mut self.event, value);
            }
            b"id" if !value.contains(&0) => {
                self.id.clear();
                push_lossy(&mut self.id, value);
            }
            // `retry` only tunes a browser's reconnection delay; it and unknown fields are ignored.
            _ => {}
        }
    }

    /// Ends the current event: returns it if it has data, and clears the event fields.
    fn take_event(&mut self) -> Option<Event> {
        let event = std::mem::take(&mut self.event);
        let mut data = std::mem::take(&mut self.data);
        if std::mem::take(&mut self.event_too_long) || data.is_empty() {
            return None;
        }
        data.pop(); // the `\n` after the last data line
        Some(Event {
            event: (!event.is_empty()).then_some(event),
            data,
            id: (!self.id.is_empty()).then(|| self.id.clone()),
        })
    }
}

/// Appends `bytes` decoded as UTF-8, invalid sequences replaced. Checked whole first: that
/// is several times faster than decoding piece by piece, and lines are nearly always valid.
fn push_lossy(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

#[cfg(test)]
mod tests;
