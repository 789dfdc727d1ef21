//! The fake upstream server: listener, per-connection request loop, recording, lifecycle.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::credits::Credits;
use super::faults::{Fault, FaultSet, FAULT_HEADER};
use super::hold::{Gate, Gates};
use super::http1::{self, Request};
use super::respond::{self, After};
use super::tls::{self, TestCa};

/// Default pause between stream frames.
pub const DEFAULT_FRAME_DELAY_MS: u64 = 5;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path including the query string.
    pub path: String,
    /// All header lines in order, duplicates kept, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether it came over HTTP/2.
    pub h2: bool,
}

impl Recorded {
    /// Values of every header with this name (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The first value of this header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }

    pub fn body_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("recorded body is JSON")
    }
}

struct Shared {
    requests: Mutex<Vec<Recorded>>,
    default_faults: Mutex<Vec<Fault>>,
    frame_delay_ms: AtomicU64,
    conns: Mutex<Vec<JoinHandle<()>>>,
    gates: Gates,
    credits: Arc<Credits>,
}

/// A running fake upstream. Dropping it stops it too (without waiting).
pub struct FakeUpstream {
    pub addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    /// Plain HTTP on 127.0.0.1:0.
    pub async fn start() -> FakeUpstream {
        Self::launch(None, DEFAULT_FRAME_DELAY_MS).await
    }

    /// Plain HTTP with this default pause between stream frames.
    pub async fn start_with_frame_delay(ms: u64) -> FakeUpstream {
        Self::launch(None, ms).await
    }

    /// HTTPS with a certificate for `localhost` and `127.0.0.1` signed by the returned CA.
    pub async fn start_tls() -> (FakeUpstream, TestCa) {
        let (ca, config) = tls::make_server();
        let fake = Self::launch(Some(TlsAcceptor::from(config)), DEFAULT_FRAME_DELAY_MS).await;
        (fake, ca)
    }

    /// HTTPS that prefers HTTP/2 when the client offers it in ALPN (`h2`, then `http/1.1`).
    pub async fn start_tls_h2() -> (FakeUpstream, TestCa) {
        let (ca, config) = tls::make_server_with_alpn(&[b"h2", b"http/1.1"]);
        let fake = Self::launch(Some(TlsAcceptor::from(config)), DEFAULT_FRAME_DELAY_MS).await;
        (fake, ca)
    }

    async fn launch(tls: Option<TlsAcceptor>, frame_delay_ms: u64) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            default_faults: Mutex::new(Vec::new()),
            frame_delay_ms: AtomicU64::new(frame_delay_ms),
            conns: Mutex::new(Vec::new()),
            gates: Gates::default(),
            credits: Arc::default(),
        });
        let is_tls = tls.is_some();
        let accept = tokio::spawn(accept_loop(listener, tls, shared.clone()));
        FakeUpstream {
            addr,
            tls: is_tls,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests received for `path` (matches the path with or without its query string).
    pub fn count(&self, path: &str) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path || r.path.split('?').next() == Some(path))
            .count()
    }

    pub fn clear_requests(&self) {
        self.shared.requests.lock().unwrap().clear();
    }

    /// Fault for requests without an `x-fake-fault` header (`None` = behave).
    pub fn set_default_fault(&self, fault: Option<Fault>) {
        self.set_default_faults(fault.into_iter().collect());
    }

    /// Several default faults at once, e.g. `Fault::parse_list("no-cost,gap=50").unwrap()`.
    pub fn set_default_faults(&self, faults: Vec<Fault>) {
        *self.shared.default_faults.lock().unwrap() = faults;
    }

    /// Default pause between stream frames from now on.
    pub fn set_frame_delay(&self, ms: u64) {
        self.shared.frame_delay_ms.store(ms, Ordering::Relaxed);
    }

    /// The gate that requests sent with `x-fake-fault: hold=NAME` wait at: the test learns
    /// when they are held (`arrived`) and lets them go (`release`).
    pub fn hold(&self, name: &str) -> Gate {
        Gate::new(name, self.shared.gates.get(name))
    }

    /// The balance `/credits` reports, which every answered chat request lowers.
    pub fn credits(&self) -> &Credits {
        &self.shared.credits
    }

    /// Closes the listener and every connection; afterwards the port refuses connections.
    pub async fn stop(mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let conns: Vec<JoinHandle<()>> = self.shared.conns.lock().unwrap().drain(..).collect();
        for c in &conns {
            c.abort();
        }
        for c in conns {
            let _ = c.await;
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for c in self.shared.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// A byte stream with a TCP socket underneath (for resets).
trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (sh, tls) = (shared.clone(), tls.clone());
        let handle = tokio::spawn(async move {
            match tls {
                None => serve(tcp, sh).await,
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let delay =
                            Duration::from_millis(sh.frame_delay_ms.load(Ordering::Relaxed));
                        let credits = sh.credits.clone();
                        let seen = move |req: &Request| {
                            sh.requests.lock().unwrap().push(Recorded {
                                h2: true,
                                ..record(req)
                            })
                        };
                        super::h2::serve(stream, delay, Arc::new(seen), credits).await;
                    } else {
                        serve(stream, sh).await;
                    }
                }
            }
        });
        let mut conns = shared.conns.lock().unwrap();
        conns.retain(|h| !h.is_finished());
        conns.push(handle);
    }
}

async fn serve<S: Transport>(stream: S, shared: Arc<Shared>) {
    let mut io = BufReader::new(stream);
    loop {
        let req = match http1::read_request(&mut io).await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    let reply = respond::error(400, &e.to_string());
                    let _ = respond::write_reply(
                        &mut io,
                        reply,
                        &FaultSet::default(),
                        Duration::ZERO,
                        true,
                        None,
                    )
                    .await;
                    let _ = io.shutdown().await;
                }
                return;
            }
        };
        shared.requests.lock().unwrap().push(record(&req));
        let close = req.wants_close();
        let faults = match req.header(FAULT_HEADER) {
            Some(spec) => Fault::parse_list(spec),
            None => Ok(shared.default_faults.lock().unwrap().clone()),
        };
        let (reply, faults) = match faults {
            Ok(list) => {
                let set = FaultSet::from_faults(&list);
                (respond::route(&req, &set, &shared.credits), set)
            }
            Err(msg) => (
                respond::error(400, &format!("bad {FAULT_HEADER}: {msg}")),
                FaultSet::default(),
            ),
        };
        let delay = Duration::from_millis(shared.frame_delay_ms.load(Ordering::Relaxed));
        let hold = faults
            .hold
            .as_ref()
            .map(|(gate, after)| (shared.gates.get(gate), *after));
        match respond::write_reply(&mut io, reply, &faults, delay, close, hold).await {
            Ok(After::KeepAlive) => continue,
            Ok(After::Close) => {
                let _ = io.shutdown().await;
                return;
            }
            Ok(After::Reset) => {
                // Give the client a moment to take in what was sent before the reset.
                tokio::time::sleep(Duration::from_millis(10)).await;
                let _ = io.get_ref().tcp().set_zero_linger();
                return;
            }
            Ok(After::Hang) => {
                let mut buf = [0u8; 1024];
                while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
                return;
            }
            Err(_) => return,
        }
    }
}

fn record(req: &Request) -> Recorded {
    Recorded {
        method: req.method.clone(),
        path: req.target.clone(),
        headers: req.headers.clone(),
        body: req.body.clone(),
        h2: false,
    }
}
