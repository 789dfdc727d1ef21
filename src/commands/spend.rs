//! `chatcache spend`: the report of what was spent and saved, and `spend reconcile`, the
//! ledger against the provider's credits.

use bytes::Bytes;
use http::{HeaderMap, Method};

use super::Admin;
use crate::cli::{ByArg, FormatArg, ReconcileArgs, SpendArgs, SpendCommand};
use crate::config::Config;
use crate::spend::{Reconciliation, Report};

pub async fn spend(config: &Config, args: SpendArgs) -> anyhow::Result<()> {
    if let Some(SpendCommand::Reconcile(r)) = args.command {
        return reconcile(config, r).await;
    }
    let admin = Admin::connect(config).await?;
    if args.rebuild {
        admin
            .call(
                Method::POST,
                "/spend/rebuild",
                Bytes::new(),
                HeaderMap::new(),
            )
            .await?;
    }
    let mut q = form_urlencoded::Serializer::new(String::new());
    let by = if args.by.is_empty() {
        vec![ByArg::Project]
    } else {
        args.by
    };
    for b in by {
        q.append_pair(
            "by",
            match b {
                ByArg::Project => "project",
                ByArg::Model => "model",
                ByArg::Day => "day",
                ByArg::Key => "key",
                ByArg::Daemon => "daemon",
            },
        );
    }
    if args.team {
        q.append_pair("team", "1");
    }
    for (name, v) in [
        ("since", &args.since),
        ("until", &args.until),
        ("project", &args.project),
    ] {
        if let Some(v) = v {
            q.append_pair(name, v);
        }
    }
    let bytes = admin
        .call(
            Method::GET,
            &format!("/spend?{}", q.finish()),
            Bytes::new(),
            HeaderMap::new(),
        )
        .await;
    admin.close().await;
    let report: Report = serde_json::from_slice(&bytes?)?;
    let text = match args.format {
        FormatArg::Json => crate::spend::render_json(&report),
        FormatArg::Csv => crate::spend::render_csv(&report),
        FormatArg::Table => crate::spend::render_table(&report),
    };
    print!("{text}");
    Ok(())
}

async fn reconcile(config: &Config, args: ReconcileArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(config).await?;
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(since) = &args.since {
        q.append_pair("since", since);
    }
    let bytes = admin
        .call(
            Method::GET,
            &format!("/spend/reconcile?{}", q.finish()),
            Bytes::new(),
            HeaderMap::new(),
        )
        .await;
    admin.close().await;
    let bytes = bytes?;
    let text = match args.format {
        FormatArg::Json => {
            let mut s = String::from_utf8_lossy(&bytes).into_owned();
            s.push('\n');
            s
        }
        FormatArg::Csv => {
            crate::spend::reconcile::render_csv(&serde_json::from_slice::<Reconciliation>(&bytes)?)
        }
        FormatArg::Table => crate::spend::reconcile::render_table(&serde_json::from_slice::<
            Reconciliation,
        >(&bytes)?),
    };
    print!("{text}");
    Ok(())
}
