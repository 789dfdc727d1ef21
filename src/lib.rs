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

pub mod cache;
pub mod config;
pub mod stream;
pub mod spend;
