//! `chatcache stats`: the one-screen summary, once or refreshed until interrupted.

use std::io::Write;

use bytes::Bytes;
use http::{HeaderMap, Method};

use super::Admin;
use crate::cli::StatsArgs;
use crate::config::Config;
use crate::spend::Report;

/// How often `stats --watch` refreshes.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn stats(config: &Config, args: StatsArgs) -> anyhow::Result<()> {
    if !args.watch {
        print!(
            "{}",
            crate::admin::dashboard::stats::render(&snapshot(config).await?)
        );
        return Ok(());
    }
    let mut out = std::io::stdout();
    loop {
        // Connect anew each time: a daemon may have started or stopped meanwhile, and an
        // in-process open must not keep the data dir from a daemon that wants to start.
        let text = match snapshot(config).await {
            Ok(s) => crate::admin::dashboard::stats::render(&s),
            Err(e) => format!(
                "chatcache: {e:#}\n(retrying every {}s)\n",
                WATCH_EVERY.as_secs()
            ),
        };
        // Clear the screen and home the cursor, then draw.
        write!(out, "\x1b[2J\x1b[H{text}")?;
        out.flush()?;
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn snapshot(config: &Config) -> anyhow::Result<crate::admin::dashboard::stats::Snapshot> {
    let admin = Admin::connect(config).await?;
    let result = snapshot_with(&admin, config).await;
    admin.close().await;
    result
}

async fn snapshot_with(
    admin: &Admin,
    config: &Config,
) -> anyhow::Result<crate::admin::dashboard::stats::Snapshot> {
    use crate::admin::dashboard::stats::{CacheLine, Snapshot};
    let now = time::OffsetDateTime::now_utc();
    let day = |d: time::Date| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day());
    let today = now.date();
    let first = today.replace_day(1)?;
    let get = |path: String| async move {
        admin
            .call(Method::GET, &path, Bytes::new(), HeaderMap::new())
            .await
    };
    let today_report: Report = serde_json::from_slice(
        &get(format!(
            "/spend?by=project&since={}&until={}",
            day(today),
            day(today)
        ))
        .await?,
    )?;
    let month_report: Report = serde_json::from_slice(
        &get(format!(
            "/spend?by=project&since={}&until={}",
            day(first),
            day(today)
        ))
        .await?,
    )?;
    let budgets = serde_json::from_slice(&get("/budgets".to_string()).await?)?;
    let cache =
        serde_json::from_slice::<serde_json::Value>(&get("/cache/stats".to_string()).await?)
            .ok()
            .map(|v| CacheLine {
                entries: v["entries"].as_u64().unwrap_or(0),
                bytes: v["bytes"].as_u64().unwrap_or(0),
                max_bytes: v["max_bytes"].as_u64().unwrap_or(0),
            });
    let health: serde_json::Value = serde_json::from_slice(&get("/health".to_string()).await?)?;
    let team = serde_json::from_value(health["team_ledger"].clone()).ok();
    let source = match admin {
        Admin::Remote { base, .. } => format!("daemon at {base}"),
        Admin::Local(_) => format!("data dir {}", config.data_dir.display()),
    };
    Ok(Snapshot {
        now,
        source,
        today: today_report,
        month: month_report,
        budgets,
        cache,
        team,
    })
}
