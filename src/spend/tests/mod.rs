//! Tests of the `Spend` facade against real ledger files and a real store: the ledger's lines,
//! files and writer here; rollups and budgets, and reports, in the files beside.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use tempfile::TempDir;
use time::macros::{date, datetime};
use time::OffsetDateTime;

use super::*;
use crate::config::{BudgetPeriod, ProjectConfig};
use crate::cost::{raw_number, CostSource};
use crate::store::{Space, Store};

struct Env {
    dir: TempDir,
    store: Store,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), 1 << 20).unwrap();
    Env { dir, store }
}

impl Env {
    fn open(&self) -> Spend {
        self.open_with(BTreeMap::new())
    }

    fn open_with(&self, projects: BTreeMap<String, ProjectConfig>) -> Spend {
        Spend::open(self.dir.path(), self.store.clone(), projects).unwrap()
    }

    fn ledger(&self) -> std::path::PathBuf {
        self.dir.path().join("ledger")
    }
}

#[allow(clippy::too_many_arguments)]
fn line(
    ts: OffsetDateTime,
    project: &str,
    model: Option<&str>,
    key: Option<&str>,
    outcome: Outcome,
    cost: Option<&str>,
    saved: Option<&str>,
) -> LedgerLine {
    let mut l = LedgerLine::new(project, "/chat/completions", outcome, 200);
    l.ts = ts;
    l.model = model.map(Arc::from);
    l.key = key.map(Arc::from);
    l.cost = cost.and_then(raw_number);
    l.saved = saved.and_then(raw_number);
    l.cost_source = if cost.is_some() {
        CostSource::Upstream
    } else {
        CostSource::Unknown
    };
    l
}

fn exact_line() -> LedgerLine {
    let mut l = LedgerLine::new("a", "/chat/completions", Outcome::Miss, 200);
    l.ts = datetime!(2026-11-25 04:28:45.123456 UTC);
    l.id = "0123456789abcdef".into();
    l.key = Some("fp1".into());
    l.model = Some("GPT-4 Turbo".into());
    l.stream = true;
    l.input_tokens = Some(12);
    l.output_tokens = Some(7);
    l.input_cost = raw_number("1.10e-5");
    l.output_cost = raw_number("0.000103");
    l.cost = raw_number("0.000114");
    l.cost_source = CostSource::Upstream;
    l.upstream_ms = Some(150);
    l.ttfb_ms = Some(40);
    l
}

const EXACT: &str = r#"{"ts":"2026-11-25T04:28:45.123Z","id":"0123456789abcdef","project":"a","key":"fp1","endpoint":"/chat/completions","model":"GPT-4 Turbo","stream":true,"outcome":"miss","status":200,"input_tokens":12,"output_tokens":7,"input_cost":1.10e-5,"output_cost":0.000103,"cost":0.000114,"saved":null,"cost_source":"upstream","upstream_ms":150,"ttfb_ms":40,"incomplete":false}"#;

#[tokio::test]
async fn line_fields_and_cost_text_round_trip_verbatim() {
    assert_eq!(serde_json::to_string(&exact_line()).unwrap(), EXACT);
    let back: LedgerLine = serde_json::from_str(EXACT).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), EXACT);

    let env = env();
    let spend = env.open();
    spend.record(exact_line()).await.unwrap();
    spend.close().await;
    let text = std::fs::read_to_string(env.ledger().join("2026-11.jsonl")).unwrap();
    assert_eq!(text, format!("{EXACT}\n"));
    let (lines, stats) = read_all(&env.ledger()).unwrap();
    assert_eq!((stats.lines, stats.skipped, stats.torn_tail), (1, 0, false));
    assert_eq!(lines[0].cost.as_ref().unwrap().get(), "0.000114");
    assert_eq!(lines[0].input_cost.as_ref().unwrap().get(), "1.10e-5");
}

#[cfg(unix)]
#[tokio::test]
async fn ledger_dir_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = env();
    let spend = env.open();
    spend.record(exact_line()).await.unwrap();
    spend.close().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.ledger()), 0o700);
    assert_eq!(mode(&env.ledger().join("2026-11.jsonl")), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_records_all_land_and_share_fsyncs() {
    let env = env();
    let spend = env.open();
    let n = 200;
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (spend, barrier) = (spend.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            let mut l = LedgerLine::new("p", "/chat/completions", Outcome::Miss, 200);
            l.cost = raw_number(&format!("0.00{i}"));
            barrier.wait().await;
            spend.record(l).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let fsyncs = spend.fsync_count();
    spend.close().await;
    let (lines, _) = read_all(&env.ledger()).unwrap();
    assert_eq!(lines.len(), n);
    let ids: std::collections::BTreeSet<_> = lines.iter().map(|l| l.id.clone()).collect();
    assert_eq!(ids.len(), n, "ids are unique");
    assert!(
        fsyncs < n as u64,
        "{fsyncs} fsyncs for {n} lines: no group commit"
    );
    let r = spend.report(&ReportQuery::default()).unwrap();
    assert_eq!(r.total.requests, n as u64);
}

#[tokio::test]
async fn torn_last_line_is_skipped_and_new_lines_start_on_their_own() {
    let env = env();
    let spend = env.open();
    let first = line(
        OffsetDateTime::now_utc(),
        "a",
        None,
        None,
        Outcome::Miss,
        Some("1"),
        None,
    );
    let file = env.ledger().join(ledger::file_name_for(&first));
    spend.record(first).await.unwrap();
    spend.close().await;
    drop(spend);

    let half = &EXACT[..EXACT.len() / 2];
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(half.as_bytes())
        .unwrap();
    let (lines, stats) = read_all(&env.ledger()).unwrap();
    assert_eq!(lines.len(), 1);
    assert!(stats.torn_tail);

    let spend = env.open();
    let next = line(
        OffsetDateTime::now_utc(),
        "a",
        None,
        None,
        Outcome::Miss,
        Some("2"),
        None,
    );
    spend.record(next).await.unwrap();
    spend.close().await;
    let (lines, stats) = read_all(&env.ledger()).unwrap();
    assert_eq!(lines.len(), 2, "both whole lines are read back");
    assert_eq!((stats.skipped, stats.torn_tail), (1, false));
    assert_eq!(lines[1].cost.as_ref().unwrap().get(), "2");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&format!("{half}\n{{")),
        "new line glued to the torn one"
    );
    let r = spend.report(&ReportQuery::default()).unwrap();
    assert_eq!(r.total.cost, 3.0);
}

#[tokio::test]
async fn failed_write_reports_error_marks_unhealthy_then_recovers() {
    let env = env();
    let spend = env.open();
    let now = OffsetDateTime::now_utc();
    spend
        .record(line(now, "a", None, None, Outcome::Miss, Some("1"), None))
        .await
        .unwrap();
    spend.fail_next_writes(1);
    let err = spend
        .record(line(now, "a", None, None, Outcome::Miss, Some("2"), None))
        .await;
    assert!(matches!(err, Err(SpendError::NotDurable(_))), "{err:?}");
    assert!(!spend.healthy());
    spend
        .record(line(now, "a", None, None, Outcome::Miss, Some("4"), None))
        .await
        .unwrap();
    assert!(spend.healthy());
    spend.close().await;
    let (lines, stats) = read_all(&env.ledger()).unwrap();
    let costs: Vec<_> = lines
        .iter()
        .map(|l| l.cost.as_ref().unwrap().get().to_string())
        .collect();
    assert_eq!(costs, ["1", "4"]);
    assert_eq!(
        (stats.skipped, stats.torn_tail),
        (0, false),
        "half-written bytes were cut"
    );
    assert_eq!(
        spend.report(&ReportQuery::default()).unwrap().total.cost,
        5.0
    );
    assert_eq!(rollup::dump(&env.store), {
        spend.rebuild().unwrap();
        rollup::dump(&env.store)
    });
}

fn mixed_lines() -> Vec<LedgerLine> {
    use Outcome::*;
    vec![
        line(
            datetime!(2026-11-24 10:00 UTC),
            "a",
            Some("m1"),
            Some("k1"),
            Miss,
            Some("0.5"),
            None,
        ),
        line(
            datetime!(2026-11-24 11:00 UTC),
            "a",
            Some("m1"),
            Some("k1"),
            Hit,
            Some("0"),
            Some("0.5"),
        ),
        {
            let mut l = line(
                datetime!(2026-11-25 09:00 UTC),
                "a",
                Some("m2"),
                Some("k2"),
                Miss,
                Some("0.25"),
                None,
            );
            l.input_tokens = Some(10);
            l.output_tokens = Some(20);
            l
        },
        line(
            datetime!(2026-11-25 09:30 UTC),
            "b",
            Some("m1"),
            None,
            Refresh,
            Some("1.0"),
            None,
        ),
        line(
            datetime!(2026-12-01 00:00 UTC),
            "b",
            None,
            Some("k1"),
            Bypass,
            None,
            None,
        ),
        line(
            datetime!(2026-12-01 00:00 UTC),
            "a",
            Some("m1"),
            Some("k1"),
            Coalesced,
            Some("0"),
            Some("0.5"),
        ),
    ]
}

async fn record_all(spend: &Spend, lines: Vec<LedgerLine>) {
    for l in lines {
        spend.record(l).await.unwrap();
    }
}

mod reports;
mod rollups;
