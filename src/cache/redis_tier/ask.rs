//! Exchanges with the team's Redis, each bounded in time: one command, a pipeline, or
//! several commands sent together (`ask_each`: one round trip to one server). One that
//! fails marks Redis down and is counted; the callers then go on without the team.

use std::future::Future;
use std::time::Duration;

use redis::{Cmd, FromRedisValue, Pipeline, RedisResult, Value};

use super::{Inner, SLOW};

impl Inner {
    /// One command within `team.timeout`; None (and counted) if it failed.
    pub(super) async fn ask<T: FromRedisValue>(&self, cmd: &Cmd) -> Option<T> {
        let mut conn = self.conn()?;
        let late = "no answer within team.timeout";
        self.bounded(self.timeout, conn.query::<T>(cmd), late).await
    }

    /// A pipeline within `team.timeout`; None (and counted) if it failed.
    pub(super) async fn ask_pipe<T: FromRedisValue>(&self, p: &Pipeline) -> Option<T> {
        let mut conn = self.conn()?;
        let late = "no answer within team.timeout";
        self.bounded(self.timeout, conn.query_pipe::<T>(p), late)
            .await
    }

    /// `cmds` run in order within `within`, each with its own result (an error Redis gave
    /// one of them is that command's); None (and counted) if the exchange itself failed.
    /// To one server they go as one pipeline: a single round trip.
    pub(super) async fn ask_each(
        &self,
        cmds: Vec<Cmd>,
        within: Duration,
    ) -> Option<Vec<RedisResult<Value>>> {
        let mut conn = self.conn()?;
        let (sent, late) = (cmds.len(), "no answer within the time allowed");
        let got = self.bounded(within, conn.query_each(cmds), late).await?;
        if got.len() != sent {
            self.failed("a reply short of the commands sent");
            return None;
        }
        Some(got)
    }

    /// Runs a write within `SLOW`; false (and Redis counted down) if it failed.
    pub(super) async fn run(&self, cmd: &Cmd) -> bool {
        let Some(mut conn) = self.conn() else {
            return false;
        };
        let late = "no answer to a write";
        self.bounded(SLOW, conn.query::<()>(cmd), late)
            .await
            .is_some()
    }

    async fn bounded<T>(
        &self,
        within: Duration,
        exchange: impl Future<Output = RedisResult<T>>,
        late: &str,
    ) -> Option<T> {
        match tokio::time::timeout(within, exchange).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed(late);
                None
            }
        }
    }
}

/// One command's result from `ask_each`, as `T`.
pub(super) fn parse<T: FromRedisValue>(got: RedisResult<Value>) -> RedisResult<T> {
    got.and_then(|v| T::from_redis_value(v).map_err(Into::into))
}
