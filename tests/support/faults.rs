//! Misbehaviour on demand: the `x-fake-fault` spec language and its parsed form.
#![allow(dead_code)]

use std::fmt;
use std::str::FromStr;

/// Request header selecting faults for that one request, e.g. `status=500` or `done,gap=20`.
pub const FAULT_HEADER: &str = "x-fake-fault";
/// Request header asking for a streamed (or plain) answer of exactly N words / chunk frames.
pub const WORDS_HEADER: &str = "x-fake-words";

/// One fault. Several can be combined, comma-separated, in one header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `status=N`: answer N with a JSON error body (429 and 503 also get `Retry-After: 7`).
    Status(u16),
    /// `reset-after=K`: stream: K frames then a TCP reset; plain: headers and K body bytes then reset.
    ResetAfter(usize),
    /// `slow-first-byte=MS`: sleep before writing the status line.
    SlowFirstByte(u64),
    /// `gap=MS`: sleep between stream frames (overrides the default frame delay).
    Gap(u64),
    /// `done`: append `data: [DONE]\n\n` to the stream.
    Done,
    /// `no-cost`: an answer without its cost fields (a stream without its cost frame).
    NoCost,
    /// `short-body`: Content-Length larger than the body, then close.
    ShortBody,
    /// `html`: 200 `text/html` body `<html>oops</html>`.
    Html,
    /// `cl-and-te`: both Content-Length and `Transfer-Encoding: chunked`.
    ClAndTe,
    /// `two-cl`: two different Content-Length headers.
    TwoCl,
    /// `redirect=URL`: 302 with `Location: URL`. Consumes the rest of the spec, so put it last.
    Redirect(String),
    /// `no-end`: send the frames, then hang without ending until the client goes away.
    NoEnd,
    /// `hold=NAME`: hold the answer before its first byte until the test opens the gate
    /// `NAME` (see `FakeUpstream::hold`); `hold=NAME@K`: hold a stream after its first K
    /// frames (its head and those frames sent).
    Hold { gate: String, after_frames: usize },
}

impl Fault {
    /// Parses a comma-separated spec such as `done,gap=10`.
    pub fn parse_list(spec: &str) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        let mut rest = spec.trim();
        while !rest.is_empty() {
            if let Some(url) = rest.strip_prefix("redirect=") {
                out.push(Fault::Redirect(url.trim().to_string()));
                break;
            }
            let (item, tail) = rest.split_once(',').unwrap_or((rest, ""));
            if !item.trim().is_empty() {
                out.push(item.parse()?);
            }
            rest = tail.trim_start();
        }
        Ok(out)
    }

    /// The header value for a list of faults.
    pub fn spec_of(faults: &[Fault]) -> String {
        faults
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, arg) = match s.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (s.trim(), None),
        };
        let num = |a: Option<&str>| -> Result<u64, String> {
            a.and_then(|a| a.parse::<u64>().ok())
                .ok_or_else(|| format!("fault {s:?} needs a number"))
        };
        Ok(match (name, arg) {
            ("status", a) => {
                let n = num(a)?;
                if !(200..=599).contains(&n) {
                    return Err(format!("fault {s:?}: status must be 200..=599"));
                }
                Fault::Status(n as u16)
            }
            ("reset-after", a) => Fault::ResetAfter(num(a)? as usize),
            ("slow-first-byte", a) => Fault::SlowFirstByte(num(a)?),
            ("gap", a) => Fault::Gap(num(a)?),
            ("redirect", Some(url)) if !url.is_empty() => Fault::Redirect(url.to_string()),
            ("done", None) => Fault::Done,
            ("no-cost", None) => Fault::NoCost,
            ("short-body", None) => Fault::ShortBody,
            ("html", None) => Fault::Html,
            ("cl-and-te", None) => Fault::ClAndTe,
            ("two-cl", None) => Fault::TwoCl,
            ("no-end", None) => Fault::NoEnd,
            ("hold", Some(arg)) => {
                let (gate, after_frames) = match arg.split_once('@') {
                    Some((gate, k)) => (gate, num(Some(k))? as usize),
                    None => (arg, 0),
                };
                if gate.is_empty() {
                    return Err(format!("fault {s:?} needs a gate name"));
                }
                Fault::Hold {
                    gate: gate.to_string(),
                    after_frames,
                }
            }
            _ => return Err(format!("unknown fault {s:?}")),
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Status(n) => write!(f, "status={n}"),
            Fault::ResetAfter(k) => write!(f, "reset-after={k}"),
            Fault::SlowFirstByte(ms) => write!(f, "slow-first-byte={ms}"),
            Fault::Gap(ms) => write!(f, "gap={ms}"),
            Fault::Done => f.write_str("done"),
            Fault::NoCost => f.write_str("no-cost"),
            Fault::ShortBody => f.write_str("short-body"),
            Fault::Html => f.write_str("html"),
            Fault::ClAndTe => f.write_str("cl-and-te"),
            Fault::TwoCl => f.write_str("two-cl"),
            Fault::Redirect(url) => write!(f, "redirect={url}"),
            Fault::NoEnd => f.write_str("no-end"),
            Fault::Hold {
                gate,
                after_frames: 0,
            } => write!(f, "hold={gate}"),
            Fault::Hold { gate, after_frames } => write!(f, "hold={gate}@{after_frames}"),
        }
    }
}

/// All faults of one request folded into flags (later entries win).
#[derive(Debug, Clone, Default)]
pub struct FaultSet {
    pub status: Option<u16>,
    pub reset_after: Option<usize>,
    pub slow_first_byte: Option<u64>,
    pub gap: Option<u64>,
    pub done: bool,
    pub no_cost: bool,
    pub short_body: bool,
    pub html: bool,
    pub cl_and_te: bool,
    pub two_cl: bool,
    pub redirect: Option<String>,
    pub no_end: bool,
    /// The gate to hold at, and after how many stream frames.
    pub hold: Option<(String, usize)>,
}

impl FaultSet {
    pub fn from_faults(faults: &[Fault]) -> FaultSet {
        let mut s = FaultSet::default();
        for fault in faults {
            match fault {
                Fault::Status(n) => s.status = Some(*n),
                Fault::ResetAfter(k) => s.reset_after = Some(*k),
                Fault::SlowFirstByte(ms) => s.slow_first_byte = Some(*ms),
                Fault::Gap(ms) => s.gap = Some(*ms),
                Fault::Done => s.done = true,
                Fault::NoCost => s.no_cost = true,
                Fault::ShortBody => s.short_body = true,
                Fault::Html => s.html = true,
                Fault::ClAndTe => s.cl_and_te = true,
                Fault::TwoCl => s.two_cl = true,
                Fault::Redirect(url) => s.redirect = Some(url.clone()),
                Fault::NoEnd => s.no_end = true,
                Fault::Hold { gate, after_frames } => s.hold = Some((gate.clone(), *after_frames)),
            }
        }
        s
    }
}
