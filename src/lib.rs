//! chatcache: a local caching reverse proxy and spend ledger in front of a chat API.
//!
//! ```text
//! client ──> server (accept, limits, graceful drain)
//!              └─> proxy::handle ── attribution (project, credential, mode)
//!                    ├─ admin::route            (/_chatcache/*)
//!                    ├─ cache::lookup ── hit ──> replay ──────────────┐
//!                    └─ miss ─> flight (single-flight) ─> upstream ──┤
//!                               └─ tee: to client now, record a copy │
//!                                  └─ on clean end: cache::store,    │
//!                                     spend::record (fsync) <────────┘
//! ```

pub mod admin;
pub mod app;
pub mod body;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod metrics;
pub mod proxy;
pub mod recent;
pub mod secret;
pub mod server;
pub mod spend;
pub mod stream;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

/// Runs the daemon on `listener` until `shutdown` resolves, then drains and makes
/// everything durable.
pub async fn run(app: Arc<app::App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    server::serve(app.clone(), listener, shutdown).await;
    app.close().await;
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
