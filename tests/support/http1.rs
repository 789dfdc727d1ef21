//! Minimal hand-written HTTP/1.1: reading requests off a socket and writing response pieces.
#![allow(dead_code)]

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Terminating chunk of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// One parsed request, body already de-chunked.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Request target as sent: path plus query.
    pub target: String,
    pub http10: bool,
    /// Every header line in order, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn tokens(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Whether the connection must be closed after answering this request.
    pub fn wants_close(&self) -> bool {
        let conn = self.tokens("connection");
        if self.http10 {
            !conn.iter().any(|t| t == "keep-alive")
        } else {
            conn.iter().any(|t| t == "close")
        }
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed mid-request",
    )
}

/// Reads one line (LF or CRLF terminated); `None` on EOF before any byte.
async fn read_line<S: AsyncRead + Unpin>(
    io: &mut BufReader<S>,
    budget: &mut usize,
) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *io)
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(bad("line too long in request"));
    }
    *budget -= n;
    if buf.pop() != Some(b'\n') {
        return Err(eof());
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| bad("request head is not UTF-8"))
}

/// Reads one request. `Ok(None)` means the client closed the connection between requests.
/// Errors of kind `InvalidData` mean the request was malformed.
pub async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
) -> io::Result<Option<Request>> {
    let mut budget = MAX_HEAD;
    let line = loop {
        match read_line(io, &mut budget).await? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => return Err(bad(format!("bad request line {line:?}"))),
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(bad(format!("unsupported version {version:?}"))),
    };
    let mut headers = Vec::new();
    loop {
        let l = read_line(io, &mut budget).await?.ok_or_else(eof)?;
        if l.is_empty() {
            break;
        }
        let (name, value) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {l:?}")))?;
        if name.is_empty() || name.ends_with([' ', '\t']) {
            return Err(bad(format!("bad header name {name:?}")));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        headers,
        body: Vec::new(),
    };
    if req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        io.flush().await?;
    }
    let te = req.tokens("transfer-encoding");
    if !te.is_empty() {
        if te.last().map(String::as_str) != Some("chunked") {
            return Err(bad("transfer-encoding without final chunked"));
        }
        req.body = read_chunked(io).await?;
    } else {
        let lens = req.tokens("content-length");
        let mut len = None;
        for l in &lens {
            let n: usize = l.parse().map_err(|_| bad("bad content-length"))?;
            if len.is_some_and(|prev| prev != n) {
                return Err(bad("conflicting content-length"));
            }
            len = Some(n);
        }
        let len = len.unwrap_or(0);
        if len > MAX_BODY {
            return Err(bad("body too large"));
        }
        req.body = vec![0; len];
        io.read_exact(&mut req.body).await?;
    }
    Ok(Some(req))
}

async fn read_chunked<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut budget = 1024;
        let line = read_line(io, &mut budget).await?.ok_or_else(eof)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            let mut budget = MAX_HEAD;
            while !read_line(io, &mut budget)
                .await?
                .ok_or_else(eof)?
                .is_empty()
            {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(bad("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        io.read_exact(&mut body[start..]).await?;
        let mut budget = 2;
        if !read_line(io, &mut budget)
            .await?
            .ok_or_else(eof)?
            .is_empty()
        {
            return Err(bad("chunk not followed by CRLF"));
        }
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Whatever",
    }
}

/// Status line plus header lines plus the blank line, written verbatim (no validation).
pub fn head(status: u16, headers: &[(String, String)]) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers {
        s.push_str(n);
        s.push_str(": ");
        s.push_str(v);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Writes `data` as one HTTP chunk and flushes. Empty data writes nothing.
pub async fn write_chunk<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out).await?;
    w.flush().await
}
