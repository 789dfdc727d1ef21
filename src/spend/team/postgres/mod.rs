//! The team ledger's PostgreSQL side, the only module that names it: the pool (deadpool)
//! and its TLS (rustls, the system roots), the schema migrations in `migrations/`, the
//! idempotent insert of a batch of lines, and the team report's query; team budgets'
//! reservations are in `budget`.

mod budget;

pub use budget::Ask;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use thiserror::Error;
use tokio_postgres::config::SslMode;

use crate::config::DatabaseUrl;
use crate::spend::line::{day_string, timestamp_string};
use crate::spend::report::from_groups;
use crate::spend::{Counters, Dim, LedgerLine, Report, ReportQuery};

/// The schema, in order: (version, name, SQL). A version once released never changes;
/// a change to the schema is a new file.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "ledger",
        include_str!("../../../../migrations/0001_ledger.sql"),
    ),
    (
        2,
        "budget_reservations",
        include_str!("../../../../migrations/0002_budget_reservations.sql"),
    ),
];

/// The advisory lock that serialises migrations across daemons starting at once
/// ("chatcach" in ASCII).
const MIGRATION_LOCK: i64 = 0x6368_6174_6361_6368;

/// Connections kept: the shipper's, a report's and the budget reservations'.
const POOL_SIZE: usize = 8;

/// A connection that cannot be made in this long counts as a failed attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
#[error("{0}")]
pub struct DbError(String);

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        // The server's own message when there is one (the error's Display alone says only
        // "db error"); never the connection settings.
        match e.as_db_error() {
            Some(db) => DbError(format!(
                "PostgreSQL: {} ({})",
                db.message(),
                db.code().code()
            )),
            None => {
                // The cause (a refused connection, a certificate not trusted) is in the
                // chain, not in the error's own text.
                let mut text = format!("PostgreSQL: {e}");
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    text.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                DbError(text)
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> DbError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => DbError::from(e),
            other => DbError(format!("PostgreSQL pool: {other}")),
        }
    }
}

/// A pool of connections to the team's database. Connects lazily: making one never
/// waits for the server.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

impl Db {
    pub fn new(url: &DatabaseUrl) -> Result<Db, DbError> {
        let mut config: tokio_postgres::Config = url
            .expose()
            .parse()
            .map_err(|e| DbError(format!("team.postgres {url}: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("chatcache");
        }
        // A peer that vanishes without closing is noticed within this time.
        config.tcp_user_timeout(Duration::from_secs(30));
        let tls = if config.get_ssl_mode() == SslMode::Disable {
            None
        } else {
            Some(tls_config().map_err(|e| DbError(format!("TLS for PostgreSQL: {e}")))?)
        };
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls {
            Some(tls) => Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config,
            ),
            None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| DbError(format!("PostgreSQL pool: {e}")))?;
        Ok(Db { pool })
    }

    /// Applies the migrations this build knows and the database lacks, in order, in one
    /// transaction that first takes an advisory lock: daemons starting at once apply each
    /// exactly once, and a failed one leaves nothing half-done.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS chatcache_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let applied: Vec<i32> = tx
            .query("SELECT version FROM chatcache_migrations", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (version, name, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO chatcache_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
            tracing::info!(version, name, "applied a team ledger migration");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Inserts the lines (each with its id, see `team::line_id`) in one statement; a line
    /// already there is left alone. In the same transaction, deletes the budget
    /// reservations `settled` that these lines replace, so that a request's cost is
    /// counted, as its reservation or as its line, at every moment. Returns how many lines
    /// were new.
    pub async fn insert(
        &self,
        daemon: &str,
        lines: &[([u8; 32], &LedgerLine)],
        settled: &[String],
    ) -> Result<u64, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let stmt = tx.prepare_cached(INSERT).await?;
        let mut c = Columns::default();
        for (hash, l) in lines {
            c.push(hash, l);
        }
        let daemon = text(daemon);
        let inserted = tx
            .execute(
                &stmt,
                &[
                    &c.hash,
                    &daemon,
                    &c.id,
                    &c.ts,
                    &c.project,
                    &c.key,
                    &c.endpoint,
                    &c.model,
                    &c.stream,
                    &c.outcome,
                    &c.status,
                    &c.input_tokens,
                    &c.output_tokens,
                    &c.input_cost,
                    &c.output_cost,
                    &c.cost,
                    &c.saved,
                    &c.cost_source,
                    &c.upstream_ms,
                    &c.ttfb_ms,
                    &c.incomplete,
                ],
            )
            .await?;
        if !settled.is_empty() {
            tx.execute(budget::SETTLE, &[&settled]).await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }
}

impl Db {
    /// The team report: the same grouping and counters as a local report, over every
    /// daemon's lines, and `daemon` as one more dimension.
    pub async fn report(&self, q: &ReportQuery) -> Result<Report, DbError> {
        let by = q.dims();
        let dims: Vec<&str> = by
            .iter()
            .map(|d| match d {
                Dim::Project => "project",
                Dim::Model => "model",
                Dim::Day => "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
                Dim::Key => "key",
                Dim::Daemon => "daemon",
            })
            .collect();
        let mut sql = String::from("SELECT ");
        for d in &dims {
            sql.push_str(d);
            sql.push_str(", ");
        }
        sql.push_str(REPORT_COUNTERS);
        if !dims.is_empty() {
            let positions: Vec<String> = (1..=dims.len()).map(|i| i.to_string()).collect();
            sql.push_str(" GROUP BY ");
            sql.push_str(&positions.join(", "));
        }
        let since = q.since.map(day_string);
        let until = q.until.map(day_string);
        let client = self.pool.get().await?;
        let rows = client.query(&sql, &[&since, &until, &q.project]).await?;
        let k = dims.len();
        let groups = rows.iter().filter_map(|r| {
            let count = |i: usize| u64::try_from(r.get::<_, i64>(k + i)).unwrap_or(0);
            let c = Counters {
                requests: count(0),
                upstream_requests: count(1),
                cache_hits: count(2),
                input_tokens: count(3),
                output_tokens: count(4),
                cost: r.get(k + 5),
                saved: r.get(k + 6),
            };
            // Without dimensions an empty ledger still gives one row of zeros.
            let dims = (0..k).map(|i| r.get::<_, Option<String>>(i)).collect();
            (c.requests > 0).then_some((dims, c))
        });
        Ok(from_groups(by, q, groups.collect::<Vec<_>>()))
    }
}

/// The counters of a report and its filters: UTC days from `$1` to `$2` included, one
/// project (`$3`) or all.
const REPORT_COUNTERS: &str = "count(*)::int8,
        (count(*) FILTER (WHERE outcome IN ('miss', 'refresh', 'bypass')))::int8,
        (count(*) FILTER (WHERE outcome IN ('hit', 'coalesced')))::int8,
        coalesce(sum(input_tokens), 0)::int8,
        coalesce(sum(output_tokens), 0)::int8,
        coalesce(sum(cost), 0)::float8,
        coalesce(sum(saved), 0)::float8
    FROM chatcache_ledger
    WHERE ($1::text IS NULL OR ts >= ($1::text)::date::timestamp AT TIME ZONE 'UTC')
      AND ($2::text IS NULL OR ts < (($2::text)::date + 1)::timestamp AT TIME ZONE 'UTC')
      AND ($3::text IS NULL OR project = $3::text)";

const INSERT: &str = "INSERT INTO chatcache_ledger (line_hash, daemon, id, ts, project, key,
        endpoint, model, stream, outcome, status, input_tokens, output_tokens, input_cost,
        output_cost, cost, saved, cost_source, upstream_ms, ttfb_ms, incomplete)
    SELECT h, $2, id, ts::timestamptz, project, key, endpoint, model, stream, outcome, status,
        it, ot, ic::numeric, oc::numeric, c::numeric, s::numeric, cs, um, tm, inc
    FROM unnest($1::bytea[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
        $8::text[], $9::bool[], $10::text[], $11::int4[], $12::int8[], $13::int8[],
        $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::int8[],
        $20::int8[], $21::bool[])
        AS t(h, id, ts, project, key, endpoint, model, stream, outcome, status, it, ot,
            ic, oc, c, s, cs, um, tm, inc)
    ON CONFLICT (line_hash) DO NOTHING";

/// A batch as one array per column (the insert unnests them).
#[derive(Default)]
struct Columns {
    hash: Vec<Vec<u8>>,
    id: Vec<String>,
    ts: Vec<String>,
    project: Vec<String>,
    key: Vec<Option<String>>,
    endpoint: Vec<String>,
    model: Vec<Option<String>>,
    stream: Vec<bool>,
    outcome: Vec<&'static str>,
    status: Vec<i32>,
    input_tokens: Vec<Option<i64>>,
    output_tokens: Vec<Option<i64>>,
    input_cost: Vec<Option<String>>,
    output_cost: Vec<Option<String>>,
    cost: Vec<Option<String>>,
    saved: Vec<Option<String>>,
    cost_source: Vec<&'static str>,
    upstream_ms: Vec<Option<i64>>,
    ttfb_ms: Vec<Option<i64>>,
    incomplete: Vec<bool>,
}

impl Columns {
    fn push(&mut self, hash: &[u8; 32], l: &LedgerLine) {
        let big = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok());
        self.hash.push(hash.to_vec());
        self.id.push(text(&l.id));
        self.ts.push(timestamp_string(l.ts));
        self.project.push(text(&l.project));
        self.key.push(l.key.as_deref().map(text));
        self.endpoint.push(text(&l.endpoint));
        self.model.push(l.model.as_deref().map(text));
        self.stream.push(l.stream);
        self.outcome.push(l.outcome.as_str());
        self.status.push(i32::from(l.status));
        self.input_tokens.push(big(l.input_tokens));
        self.output_tokens.push(big(l.output_tokens));
        self.input_cost.push(money(l.input_cost.as_deref()));
        self.output_cost.push(money(l.output_cost.as_deref()));
        self.cost.push(money(l.cost.as_deref()));
        self.saved.push(money(l.saved.as_deref()));
        self.cost_source.push(l.cost_source.as_str());
        self.upstream_ms.push(big(l.upstream_ms));
        self.ttfb_ms.push(big(l.ttfb_ms));
        self.incomplete.push(l.incomplete);
    }
}

/// PostgreSQL text cannot hold NUL: one in a free-text field (a model name a client sent)
/// would refuse the whole batch, every time. It becomes U+FFFD.
fn text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s.to_string()
    }
}

/// The exact number text for a `numeric`, or null when it is not a number `numeric`
/// takes (an exponent beyond its range would refuse the whole batch, every time).
fn money(raw: Option<&serde_json::value::RawValue>) -> Option<String> {
    let raw = raw?.get();
    let finite = raw.parse::<f64>().is_ok_and(f64::is_finite);
    let in_range = match raw.find(['e', 'E']) {
        None => raw.len() <= 1000,
        Some(i) => i <= 1000 && raw[i + 1..].parse::<i64>().is_ok_and(|e| e.abs() <= 300),
    };
    (finite && in_range).then(|| raw.to_string())
}

/// rustls with the system roots: TLS to PostgreSQL is always verified.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "could not load some system CA certificates");
    }
    roots.add_parsable_certificates(native.certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_money_never_refuse_a_batch() {
        assert_eq!(text("a\0b"), "a\u{fffd}b");
        assert_eq!(text("plain"), "plain");
        let raw = |s: &str| serde_json::value::RawValue::from_string(s.to_string()).unwrap();
        assert_eq!(money(Some(&raw("1.10e-5"))).as_deref(), Some("1.10e-5"));
        assert_eq!(money(Some(&raw("0"))).as_deref(), Some("0"));
        assert_eq!(money(Some(&raw("1e-400"))), None);
        assert_eq!(money(Some(&raw("1e400"))), None);
        assert_eq!(money(None), None);
    }
}
