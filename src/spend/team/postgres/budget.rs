//! Team budget reservations in PostgreSQL: the one statement that holds a request's worst
//! case if it fits (under a per-project advisory lock, so daemons admitting at once are
//! serialised), their renewal, and the deletes that release or settle a reservation.

use std::time::Duration;

use super::{Db, DbError};

/// The advisory lock class of team budgets ("bdgt" in ASCII); the second key is the
/// project's hash, so projects do not wait on each other.
const BUDGET_LOCK: i32 = 0x6264_6774;

/// Holds the worst case if the project's spend in the period (its lines in the team
/// ledger since `$2`, or ever when null), its unexpired reservations and the worst case
/// fit the budget. One statement: its snapshot is taken after the lock is held (the lock
/// is the transaction's previous statement), so it sees every reservation committed
/// before, and the next daemon's statement sees this one.
const RESERVE: &str = "WITH used AS (
        SELECT
            (SELECT coalesce(sum(cost), 0)::float8 FROM chatcache_ledger
                WHERE project = $1
                    AND ($2::text IS NULL OR ts >= ($2::text)::date::timestamp AT TIME ZONE 'UTC')) AS spent,
            (SELECT coalesce(sum(amount), 0)::float8 FROM chatcache_reservations
                WHERE project = $1 AND expires_at > now()) AS reserved
    ), held AS (
        INSERT INTO chatcache_reservations (id, project, daemon, amount, expires_at)
        SELECT $3, $1, $4, $5::float8, now() + $6::int8 * interval '1 millisecond'
        FROM used WHERE spent + reserved + $5::float8 <= $7::float8
        RETURNING id
    )
    SELECT spent, reserved, EXISTS (SELECT 1 FROM held) FROM used";

/// Deletes reservations by id: a request that died, or (by the shipper, with the lines
/// that replace them) requests whose lines are now in the team ledger.
pub(in crate::spend::team) const SETTLE: &str =
    "DELETE FROM chatcache_reservations WHERE id = ANY($1::text[])";

/// What the team's database said of a reservation asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Held {
    /// The project's spend in the period, in the team ledger.
    pub spent: f64,
    /// Its unexpired reservations, before this one.
    pub reserved: f64,
    /// The worst case fitted and is now held.
    pub admitted: bool,
}

/// A reservation asked for: its id, the project and its budget, and the period's start.
pub struct Ask<'a> {
    pub id: &'a str,
    pub daemon: &'a str,
    pub project: &'a str,
    pub amount: f64,
    pub budget: f64,
    /// The period's first UTC day ("YYYY-MM-DD"); None for an all-time budget.
    pub since: Option<String>,
    /// How long the reservation counts unless settled.
    pub ttl: Duration,
}

impl Db {
    /// Holds `ask.amount` against `ask.project`'s budget if it fits, in one transaction.
    pub async fn reserve(&self, ask: &Ask<'_>) -> Result<Held, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&BUDGET_LOCK, &ask.project],
        )
        .await?;
        let ttl_ms = i64::try_from(ask.ttl.as_millis()).unwrap_or(i64::MAX);
        let row = tx
            .query_one(
                RESERVE,
                &[
                    &ask.project,
                    &ask.since,
                    &ask.id,
                    &ask.daemon,
                    &ask.amount,
                    &ttl_ms,
                    &ask.budget,
                ],
            )
            .await?;
        // Rows expired are no longer counted; removing them keeps the table small.
        tx.execute(
            "DELETE FROM chatcache_reservations WHERE project = $1 AND expires_at <= now()",
            &[&ask.project],
        )
        .await?;
        tx.commit().await?;
        Ok(Held {
            spent: row.get(0),
            reserved: row.get(1),
            admitted: row.get(2),
        })
    }

    /// Pushes the expiry of reservations `ids` to `ttl` from now.
    pub async fn renew(&self, ids: &[String], ttl: Duration) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        client
            .execute(
                "UPDATE chatcache_reservations
                    SET expires_at = now() + $2::int8 * interval '1 millisecond'
                    WHERE id = ANY($1::text[])",
                &[&ids, &ttl_ms],
            )
            .await?;
        Ok(())
    }

    /// Whether the budget table can be read now (nothing is read: its plan is enough).
    pub async fn reachable(&self) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        client
            .execute("SELECT 1 FROM chatcache_reservations LIMIT 0", &[])
            .await?;
        Ok(())
    }

    /// Releases reservations whose requests died before costing anything.
    pub async fn release(&self, ids: &[String]) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        client.execute(SETTLE, &[&ids]).await?;
        Ok(())
    }
}
