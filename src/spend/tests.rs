//! Tests of the `Spend` facade against real ledger files and a real store.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use tempfile::TempDir;
use time::macros::{date, datetime};
use time::OffsetDateTime;

use super::*;
use crate::config::{BudgetPeriod, ProjectConfig};
use crate::cost::{raw_number, CostSource};
use crate::store::{Space, Store, StoreError};

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

#[tokio::test]
async fn rollups_equal_a_rebuild_from_the_ledger() {
    let env = env();
    let spend = env.open();
    record_all(&spend, mixed_lines()).await;
    // Float noise (0.1 + 0.2) must add up the same way live and in a rebuild.
    for cost in ["0.1", "0.2", "0.3", "1.10e-5"] {
        let l = line(
            datetime!(2026-11-25 12:00 UTC),
            "a",
            Some("m2"),
            Some("k2"),
            Outcome::Miss,
            Some(cost),
            None,
        );
        spend.record(l).await.unwrap();
    }
    spend.fold_rollups();
    let live = rollup::dump(&env.store);
    assert!(!live.is_empty());
    spend.rebuild().unwrap();
    assert_eq!(rollup::dump(&env.store), live);
    assert_eq!(
        std::fs::read_dir(env.ledger()).unwrap().count(),
        2,
        "one file per month"
    );
}

#[tokio::test]
async fn missing_or_corrupt_rollups_are_rebuilt_on_open() {
    let env = env();
    let spend = env.open();
    record_all(&spend, mixed_lines()).await;
    spend.close().await;
    let before = rollup::dump(&env.store);

    env.store.clear(Space::Rollups).unwrap();
    let spend = env.open();
    spend.close().await;
    assert_eq!(rollup::dump(&env.store), before);

    let (k, _) = before.iter().find(|(k, _)| k[0] == b'd').unwrap().clone();
    env.store.put(Space::Rollups, &k, b"garbage").unwrap();
    let spend = env.open();
    spend.close().await;
    assert_eq!(rollup::dump(&env.store), before);
}

#[tokio::test]
async fn lines_after_the_watermark_are_caught_up_on_open() {
    let env = env();
    let spend = env.open();
    let mut lines = mixed_lines();
    let late = lines.split_off(4);
    record_all(&spend, lines).await;
    spend.close().await;
    let before = spend.report(&ReportQuery::default()).unwrap().total;
    assert_eq!(before.requests, 4);

    // As if the process died between the fsync and the rollup update.
    let mut extra = late;
    extra.push(line(
        datetime!(2026-11-25 23:00 UTC),
        "c",
        None,
        None,
        Outcome::Miss,
        Some("2.5"),
        None,
    ));
    for l in &extra {
        let path = env.ledger().join(ledger::file_name_for(l));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        writeln!(f, "{}", serde_json::to_string(l).unwrap()).unwrap();
    }
    let spend = env.open();
    let after = spend.report(&ReportQuery::default()).unwrap().total;
    assert_eq!(after.requests, 7);
    assert_eq!(after.cost, 4.25);
    let caught_up = rollup::dump(&env.store);
    spend.rebuild().unwrap();
    assert_eq!(rollup::dump(&env.store), caught_up);
}

fn budgeted(period: BudgetPeriod, budget: f64) -> BTreeMap<String, ProjectConfig> {
    let mut p = BTreeMap::new();
    p.insert(
        "a".to_string(),
        ProjectConfig {
            budget: Some(budget),
            budget_period: period,
            max_request_cost: crate::config::DEFAULT_MAX_REQUEST_COST,
        },
    );
    p
}

#[tokio::test]
async fn budget_is_exhausted_when_spend_crosses_it_and_survives_reopen() {
    let env = env();
    let spend = env.open_with(budgeted(BudgetPeriod::Day, 0.001));
    let now = OffsetDateTime::now_utc();
    assert_eq!(spend.budget("a"), BudgetState::Remaining(0.001));
    assert_eq!(spend.budget("other"), BudgetState::Unlimited);
    spend
        .record(line(
            now,
            "a",
            None,
            None,
            Outcome::Miss,
            Some("0.0006"),
            None,
        ))
        .await
        .unwrap();
    assert!(matches!(spend.budget("a"), BudgetState::Remaining(r) if (r - 0.0004).abs() < 1e-12));
    spend.record_nowait(line(
        now,
        "a",
        None,
        None,
        Outcome::Miss,
        Some("0.0006"),
        None,
    ));
    assert!(matches!(spend.budget("a"), BudgetState::Exhausted { .. }));
    spend.close().await;

    for (period, exhausted) in [
        (BudgetPeriod::Day, true),
        (BudgetPeriod::Month, true),
        (BudgetPeriod::Total, true),
    ] {
        let spend = env.open_with(budgeted(period, 0.001));
        assert_eq!(
            matches!(spend.budget("a"), BudgetState::Exhausted { .. }),
            exhausted
        );
        spend.close().await;
    }
    // Old spend counts toward a total budget only.
    let spend = env.open_with(budgeted(BudgetPeriod::Total, 0.01));
    spend
        .record(line(
            datetime!(2020-01-01 00:00 UTC),
            "a",
            None,
            None,
            Outcome::Miss,
            Some("0.009"),
            None,
        ))
        .await
        .unwrap();
    assert!(matches!(spend.budget("a"), BudgetState::Exhausted { .. }));
    spend.close().await;
    let spend = env.open_with(budgeted(BudgetPeriod::Month, 0.01));
    assert!(matches!(spend.budget("a"), BudgetState::Remaining(_)));
    spend.close().await;
}

async fn report_env() -> (Env, Spend) {
    let env = env();
    let spend = env.open();
    record_all(&spend, mixed_lines()).await;
    (env, spend)
}

fn query(by: &[Dim]) -> ReportQuery {
    ReportQuery {
        by: by.to_vec(),
        ..ReportQuery::default()
    }
}

fn row_summary(r: &Report) -> Vec<(Vec<Option<&str>>, u64, f64)> {
    r.rows
        .iter()
        .map(|row| {
            (
                row.dims.iter().map(|d| d.as_deref()).collect(),
                row.counters.requests,
                row.counters.cost,
            )
        })
        .collect()
}

#[tokio::test]
async fn report_json_has_the_documented_shape() {
    let (_env, spend) = report_env().await;
    let r = spend.report(&query(&[Dim::Project])).unwrap();
    assert_eq!(
        render_json(&r),
        r#"{"by":["project"],"since":null,"until":null,"rows":[{"project":"b","requests":2,"upstream_requests":2,"cache_hits":0,"input_tokens":0,"output_tokens":0,"cost":1.0,"saved":0.0},{"project":"a","requests":4,"upstream_requests":2,"cache_hits":2,"input_tokens":10,"output_tokens":20,"cost":0.75,"saved":1.0}],"total":{"requests":6,"upstream_requests":4,"cache_hits":2,"input_tokens":10,"output_tokens":20,"cost":1.75,"saved":1.0}}"#
    );
    let back: Report = serde_json::from_str(&render_json(&r)).unwrap();
    assert_eq!(back, r);
    let q = ReportQuery {
        by: vec![Dim::Day, Dim::Key],
        since: Some(date!(2026 - 11 - 25)),
        until: Some(date!(2026 - 11 - 25)),
        project: None,
    };
    let r = spend.report(&q).unwrap();
    let json = render_json(&r);
    assert!(
        json.starts_with(r#"{"by":["day","key"],"since":"2026-11-25","until":"2026-11-25","rows":[{"day":"2026-11-25","key":null,"requests":1,"#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
}

#[tokio::test]
async fn report_groups_by_each_dimension_and_combinations() {
    let (_env, spend) = report_env().await;
    let r = spend.report(&query(&[Dim::Model])).unwrap();
    assert_eq!(
        row_summary(&r),
        [
            (vec![Some("m1")], 4, 1.5),
            (vec![Some("m2")], 1, 0.25),
            (vec![None], 1, 0.0)
        ]
    );
    let r = spend.report(&query(&[Dim::Day])).unwrap();
    assert_eq!(
        row_summary(&r),
        [
            (vec![Some("2026-11-25")], 2, 1.25),
            (vec![Some("2026-11-24")], 2, 0.5),
            (vec![Some("2026-12-01")], 2, 0.0)
        ]
    );
    let r = spend.report(&query(&[Dim::Key])).unwrap();
    assert_eq!(
        row_summary(&r),
        [
            (vec![None], 1, 1.0),
            (vec![Some("k1")], 4, 0.5),
            (vec![Some("k2")], 1, 0.25)
        ]
    );
    let r = spend
        .report(&query(&[Dim::Project, Dim::Model, Dim::Project]))
        .unwrap();
    assert_eq!(
        r.by,
        [Dim::Project, Dim::Model],
        "repeated dimension dropped"
    );
    assert_eq!(
        row_summary(&r),
        [
            (vec![Some("b"), Some("m1")], 1, 1.0),
            (vec![Some("a"), Some("m1")], 3, 0.5),
            (vec![Some("a"), Some("m2")], 1, 0.25),
            (vec![Some("b"), None], 1, 0.0)
        ]
    );
    let r = spend.report(&query(&[])).unwrap();
    assert_eq!(row_summary(&r), [(vec![], 6, 1.75)]);
    assert_eq!(r.total.cache_hits, 2);
    assert_eq!(r.total.upstream_requests, 4);
    assert_eq!(r.total.saved, 1.0);
}

#[tokio::test]
async fn report_filters_by_dates_and_project() {
    let (_env, spend) = report_env().await;
    let q = |since, until, project: Option<&str>| ReportQuery {
        by: vec![Dim::Day],
        since,
        until,
        project: project.map(String::from),
    };
    let total = |q: ReportQuery| spend.report(&q).unwrap().total;
    let (d24, d25, d30) = (
        date!(2026 - 11 - 24),
        date!(2026 - 11 - 25),
        date!(2026 - 11 - 30),
    );
    assert_eq!(total(q(Some(d25), Some(d25), None)).requests, 2);
    assert_eq!(total(q(Some(d25), Some(d25), None)).cost, 1.25);
    assert_eq!(total(q(Some(d25), None, None)).requests, 4);
    assert_eq!(total(q(None, Some(d24), None)).requests, 2);
    assert_eq!(total(q(None, Some(d30), None)).requests, 4);
    assert_eq!(total(q(Some(d25), Some(d24), None)).requests, 0);
    let r = spend.report(&q(None, None, Some("a"))).unwrap();
    assert_eq!(
        row_summary(&r),
        [
            (vec![Some("2026-11-24")], 2, 0.5),
            (vec![Some("2026-11-25")], 1, 0.25),
            (vec![Some("2026-12-01")], 1, 0.0)
        ]
    );
    assert_eq!(total(q(None, None, Some("nobody"))).requests, 0);
}

#[tokio::test]
async fn csv_and_table_rendering() {
    let (_env, spend) = report_env().await;
    let r = spend.report(&query(&[Dim::Project])).unwrap();
    assert_eq!(
        render_csv(&r),
        "project,requests,upstream_requests,cache_hits,input_tokens,output_tokens,cost,saved\r\n\
         b,2,2,0,0,0,1,0\r\n\
         a,4,2,2,10,20,0.75,1\r\n"
    );
    let table = render_table(&r);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(
        lines[0].starts_with("project  requests  upstream  hits"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("b ") && lines[1].ends_with("$1.000000  $0.000000"),
        "{table}"
    );
    assert!(
        lines[3].starts_with("TOTAL") && lines[3].ends_with("$1.750000  $1.000000"),
        "{table}"
    );
    assert_eq!(lines[0].len(), lines[3].len(), "columns aligned:\n{table}");
    assert_eq!(
        lines[4],
        "Saved $1.000000 by the cache: 36.4% of the $2.750000 it would have cost."
    );

    let mut odd = r.clone();
    odd.rows[0].dims[0] = Some("x,\"y\"\u{1b}[31m".into());
    assert!(render_csv(&odd).contains("\r\n\"x,\"\"y\"\"\u{1b}[31m\",2,"));
    assert!(
        !render_table(&odd).contains('\u{1b}'),
        "control characters reach the terminal"
    );
}

#[tokio::test]
async fn hit_lines_wait_for_the_writer_once_its_queue_is_full_and_none_is_lost() {
    let env = env();
    let spend = env.open();
    let ts = datetime!(2026-11-25 04:00 UTC);
    let hit = || line(ts, "a", None, None, Outcome::Hit, None, Some("0.001"));
    let held = spend.hold_writer();
    let mut pushed = 0;
    let mut done = loop {
        pushed += 1;
        assert!(pushed <= 3 * writer::QUEUE_CAP, "the queue never filled");
        if let Some(done) = spend.record_nowait(hit()) {
            break done;
        }
        assert!(spend.queued_len() <= writer::QUEUE_CAP);
    };
    assert_eq!(spend.queued_len(), writer::QUEUE_CAP);
    assert!(matches!(
        done.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty)
    ));
    drop(held);
    durable(done).await.unwrap();
    assert!(spend.record_nowait(hit()).is_none());
    spend.close().await;
    let (lines, stats) = read_all(&env.ledger()).unwrap();
    assert_eq!((lines.len(), stats.skipped), (pushed + 1, 0));
}

#[tokio::test]
async fn a_closed_ledger_has_let_go_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let ts = datetime!(2026-11-25 04:00 UTC);
    for round in 0..20 {
        // The store's own I/O threads may hold its lock a moment after the last handle
        // goes; anything of ours still holding the store would hold it for good.
        let path = dir.path().join("db");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let store = loop {
            match Store::open(&path, 1 << 20) {
                Ok(s) => break s,
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        };
        let spend = Spend::open(dir.path(), store, BTreeMap::new()).unwrap();
        let l = line(ts, "a", None, None, Outcome::Miss, Some("0.001"), None);
        spend.record(l).await.unwrap();
        spend.close().await;
        drop(spend);
        let (lines, _) = read_all(&dir.path().join("ledger")).unwrap();
        assert_eq!(lines.len(), round + 1);
    }
}

#[tokio::test]
async fn rollups_are_folded_in_bulk_and_reports_still_count_every_durable_line() {
    let env = env();
    let spend = env.open();
    let ts = datetime!(2026-11-25 04:00 UTC);
    let started = std::time::Instant::now();
    for _ in 0..40 {
        let l = line(ts, "a", None, None, Outcome::Miss, Some("0.25"), None);
        spend.record(l).await.unwrap();
    }
    // Forty commits (each waits for its fsync), but one fold per ROLLUP_EVERY at most.
    let folds = spend.inner.shared.folds.load(Ordering::SeqCst);
    let periods = started.elapsed().as_millis() / writer::ROLLUP_EVERY.as_millis();
    assert!(
        folds as u128 <= periods + 1 && folds < 40,
        "{folds} folds in {periods} periods"
    );
    let q = ReportQuery::default();
    let report = spend.report(&q).unwrap();
    assert_eq!(report.total.requests, 40, "{report:?}");
    assert!((report.total.cost - 10.0).abs() < 1e-9, "{report:?}");
    // Left alone, the writer folds within ROLLUP_EVERY by itself.
    let l = line(ts, "a", None, None, Outcome::Miss, Some("0.25"), None);
    spend.record(l).await.unwrap();
    let folds = spend.inner.shared.folds.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while spend.inner.shared.folds.load(Ordering::SeqCst) == folds {
        assert!(std::time::Instant::now() < deadline, "never folded");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    spend.close().await;
}
