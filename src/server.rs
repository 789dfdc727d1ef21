//! The accept loop: HTTP/1.1 and h2c on one port, a connection cap, the header read
//! timeout against slow clients, and the graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::app::App;

/// What an h2c client sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client opened with the HTTP/2 preface. Looks with `peek`, so the bytes stay
/// in the socket for the protocol chosen: hyper's HTTP/1 read buffer then starts empty and
/// keeps its first size (a buffer handed the first bytes separately grows to twice that,
/// for the life of the connection).
async fn opens_with_h2_preface(stream: &TcpStream) -> io::Result<bool> {
    let mut seen = [0u8; 24];
    loop {
        let n = stream.peek(&mut seen).await?;
        if n == 0 || seen[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface so far: the socket stays readable, so wait a little before
        // looking again rather than spin (rare: the preface is one small write).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A connection's part in the drain: told when it starts, waited for until it ends.
struct Drain {
    started: CancellationToken,
    watcher: Watcher,
}

/// How each accepted connection is served.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// How long a client may take to send what tells its protocol.
    sniff_timeout: Duration,
}

impl Protocols {
    fn new(limits: &crate::config::Limits) -> Protocols {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true)
            // Answers here are small (a cached answer, a stream's piece): copied behind the
            // head into one buffer and sent with one plain write, they cost less than a
            // queue of buffers sent with a vectored write. A large answer is copied once
            // more.
            .writev(false);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)));
        Protocols {
            http1,
            http2,
            sniff_timeout: limits.header_read_timeout,
        }
    }

    /// Serves one connection to its end, or until the drain closes it. A connection that
    /// has not yet said which protocol it speaks is closed as soon as the drain begins.
    async fn serve(&self, app: Arc<App>, stream: TcpStream, peer: SocketAddr, drain: Drain) {
        let sniffed = tokio::select! {
            r = tokio::time::timeout(self.sniff_timeout, opens_with_h2_preface(&stream)) => r,
            () = drain.started.cancelled() => return,
        };
        let h2 = match sniffed {
            Ok(Ok(h2)) => h2,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, %peer, "connection ended before its first request");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "connection sent nothing in time; closed");
                return;
            }
        };
        let watcher = drain.watcher;
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(crate::router::route(app, req, peer).await) }
        });
        let io = TokioIo::new(stream);
        let ended = if h2 {
            watcher
                .watch(self.http2.serve_connection(io, service))
                .await
        } else {
            watcher
                .watch(self.http1.serve_connection(io, service))
                .await
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    }
}

/// Serves until `shutdown` resolves, then stops accepting and gives in-flight requests,
/// streams and upstream exchanges `limits.shutdown_grace` to finish.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let limits = app.config.limits.clone();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let protocols = Arc::new(Protocols::new(&limits));
    let draining = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, protocols) = (app.clone(), protocols.clone());
        let drain = Drain {
            started: draining.clone(),
            watcher: graceful.watcher(),
        };
        tokio::spawn(async move {
            protocols.serve(app, stream, peer, drain).await;
            drop(permit);
        });
    }
    drop(listener);
    draining.cancel();
    tracing::info!(grace = ?limits.shutdown_grace, "shutting down: no new connections; draining");
    let deadline = tokio::time::Instant::now() + limits.shutdown_grace;
    if tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over with connections still open; closing them");
    }
    app.exchanges.close();
    if tokio::time::timeout_at(deadline, app.exchanges.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "grace period over with upstream answers still arriving; they are not recorded"
        );
    }
}
