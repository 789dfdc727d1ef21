//! The shipper's count of what it has left: only lines the ledger's writer has made
//! durable, never bytes past them (a write under way, or one it will cut back).

use std::collections::BTreeMap;
use std::io::Write;

use super::*;
use crate::config::{Config, Overrides};
use crate::spend::{ledger, LedgerLine, Outcome, Spend};

fn line(project: &str) -> LedgerLine {
    LedgerLine::new(project, "/chat/completions", Outcome::Miss, 200)
}

#[tokio::test]
async fn only_lines_the_writer_made_durable_are_pending() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
    let spend = Spend::open(dir.path(), store.clone(), BTreeMap::new()).unwrap();
    let first = line("a");
    let name = ledger::file_name_for(&first);
    spend.record(first).await.unwrap();
    spend.record(line("b")).await.unwrap();
    // Bytes past the writer's last sync, as a write under way leaves them.
    let mut extra = Vec::new();
    line("c").write_json(&mut extra);
    extra.push(b'\n');
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("ledger").join(&name))
        .unwrap()
        .write_all(&extra)
        .unwrap();

    let text = "[team]\npostgres = \"postgres://u@127.0.0.1:1/x?sslmode=disable\"\nname = \"t\"\n";
    let ov = Overrides {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let config = Config::from_parts(None, Some(text), ov, |_| None).unwrap();
    let team = Team::open(&config.team, store, &spend).unwrap().unwrap();
    let surveyor = team.clone();
    let pending = tokio::task::spawn_blocking(move || surveyor.survey())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending, [name]);
    let stats = team.stats();
    assert_eq!(stats.pending_lines, 2, "{stats:?}");
    assert_eq!(stats.state, "not running");
    assert!(stats.oldest_pending_seconds >= 0.0);
    spend.close().await;
}
