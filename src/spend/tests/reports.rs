//! Tests of spend reports (shape, grouping, filters, rendering) and of the writer under load.

use super::*;

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
        // Anything of ours still holding the store would hold its lock for good, and the
        // open below would give up at its deadline.
        let store = crate::store::open_when_free(&dir.path().join("db"), 1 << 20);
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
