//! chatcache: a local caching reverse proxy and spend ledger in front of a chat API.
//!
//! ```text
//! client ──> server (accept, connection cap, header timeout, graceful drain)
//!              └─> router ── /_chatcache/* ──> admin (health, stats, spend, cache ops,
//!                    │                                dashboard, explain)
//!                    └─ the API ──> proxy: the request read into an Exchange
//!                         ├─ hit: cache (memory, sled, the team's Redis) ─> replay ─────┐
//!                         └─ miss: admission (budget reservation, ledger) ─>            │
//!                              cache::flight (one upstream call per key) ─> upstream    │
//!                              └─ stream::tee: to every reader now, recorded as it goes │
//!                                 └─ at the clean end: cache writer stores the entry;   │
//!                                    spend records the line (fsync) <───────────────────┘
//! Beside them: the team ledger's shipper (spend::team), budget alerts, the credits poller.
//! Below them all: request (bodies and their readings), attribution, cost, config, store
//! (the data dir's sled database), error, body, metrics.
//! ```

pub mod admin;
pub mod alerts;
pub mod app;
pub mod attribution;
pub mod body;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod config;
pub mod cost;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod recent;
pub mod request;
pub mod router;
pub mod secret;
pub mod server;
pub mod sized_lru;
pub mod spend;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

/// Runs the daemon on `listener` until `shutdown` resolves, then drains and makes
/// everything durable.
/// With a team ledger, its shipper runs alongside until then.
pub async fn run(app: Arc<app::App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    app.alerts.start().await;
    // Crossings the last run found and did not deliver are found again now.
    for project in app.config.projects.keys() {
        app.check_alerts(project);
    }
    let poller = proxy::credits::spawn_poller(&app);
    let stop = tokio_util::sync::CancellationToken::new();
    let shipper = app.team.as_ref().map(|t| t.spawn_shipper(stop.clone()));
    server::serve(app.clone(), listener, shutdown).await;
    if let Some(p) = poller {
        p.abort();
    }
    app.close().await;
    stop.cancel();
    if let Some(shipper) = shipper {
        let _ = shipper.await;
    }
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal that arrives before the
/// daemon is serving is not lost), and returns a future that resolves on either.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
