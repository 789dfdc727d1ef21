//! Spend benchmark: report time over 1M ledger records, and the latency a durable
//! (fsync'd, group-committed) ledger write adds to an answer under 100 concurrent requests,
//! against one request at a time in the same run. `cargo bench --bench spend`
//! (`CHATCACHE_BENCH_LINES=N` to change the record count).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use chatcache::cost::{raw_number, CostSource, Usage};
use chatcache::spend::{Dim, LedgerLine, Outcome, ReportQuery, Spend};
use chatcache::store::Store;

fn line(i: usize, day: time::Date) -> LedgerLine {
    let mut l = LedgerLine::new(
        &format!("project-{}", i % 12),
        "/chat/completions",
        if i % 3 == 0 {
            Outcome::Hit
        } else {
            Outcome::Miss
        },
        200,
    );
    l.ts = day.midnight().assume_utc() + Duration::from_secs((i % 86_400) as u64);
    l.model = Some(["GPT-4 Turbo", "Claude 3.5 Sonnet", "Deepseek Chat"][i % 3].into());
    l.key = Some(format!("fp-{:032x}", i % 40).into());
    l.set_usage(
        Usage {
            input_tokens: Some(100 + (i % 50) as u64),
            output_tokens: Some(200 + (i % 70) as u64),
            input_cost: raw_number("0.003000"),
            output_cost: raw_number("0.012000"),
            cost: raw_number("0.015000"),
        },
        CostSource::Upstream,
    );
    l
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report_bench(lines: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger");
    std::fs::create_dir_all(&ledger).expect("ledger dir");
    let t = Instant::now();
    let first = time::macros::date!(2026 - 01 - 01);
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(ledger.join("2026-01.jsonl")).expect("file"));
    for i in 0..lines {
        let day = first + time::Duration::days((i * 31 / lines) as i64);
        serde_json::to_writer(&mut out, &line(i, day)).expect("write");
        out.write_all(b"\n").expect("write");
    }
    out.flush().expect("flush");
    drop(out);
    let size = std::fs::metadata(ledger.join("2026-01.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "generated {lines} ledger lines ({:.0} MiB) in {:.1} s",
        size as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );

    let store = Store::open(&dir.path().join("store"), 32 << 20).expect("store");
    let t = Instant::now();
    let spend = Spend::open(dir.path(), store, BTreeMap::new()).expect("spend");
    let rebuild = t.elapsed();
    println!(
        "rollups rebuilt from the ledger on open: {:.2} s ({:.0} lines/s)",
        rebuild.as_secs_f64(),
        lines as f64 / rebuild.as_secs_f64()
    );

    for by in [
        vec![Dim::Project],
        vec![Dim::Day],
        vec![Dim::Project, Dim::Model, Dim::Day],
        vec![Dim::Key],
    ] {
        let q = ReportQuery {
            by: by.clone(),
            since: None,
            until: None,
            project: None,
        };
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..7 {
            let t = Instant::now();
            let r = spend.report(&q).expect("report");
            times.push(t.elapsed());
            rows = r.rows.len();
            assert_eq!(
                r.total.requests as usize, lines,
                "the report covers every line"
            );
        }
        times.sort();
        println!(
            "report by {by:?}: median {:.2} ms ({rows} rows)",
            ms(times[times.len() / 2])
        );
    }
    let t = Instant::now();
    let mut n = 0;
    for l in std::io::BufRead::lines(std::io::BufReader::new(
        std::fs::File::open(ledger.join("2026-01.jsonl")).expect("open"),
    )) {
        let l = l.expect("line");
        let v: serde_json::Value = serde_json::from_str(&l).expect("json");
        n += usize::from(v["project"].is_string());
    }
    println!(
        "baseline, same run: one scan of the ledger file without rollups: {:.0} ms ({n} lines)",
        ms(t.elapsed())
    );
}

async fn durable_latency(concurrency: usize, per_task: usize) -> (Vec<Duration>, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("store"), 32 << 20).expect("store");
    let spend = Spend::open(dir.path(), store, BTreeMap::new()).expect("spend");
    let before = spend.fsync_count();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let spend = spend.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let l = line(c * per_task + i, time::OffsetDateTime::now_utc().date());
                let t = Instant::now();
                spend.record(l).await.expect("durable");
                times.push(t.elapsed());
            }
            times
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let fsyncs = spend.fsync_count() - before;
    spend.close().await;
    all.sort();
    (all, fsyncs)
}

fn main() {
    let lines = std::env::var("CHATCACHE_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    report_bench(lines);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (alone, alone_syncs) = rt.block_on(durable_latency(1, 200));
    let (crowd, crowd_syncs) = rt.block_on(durable_latency(100, 20));
    println!(
        "durable ledger write, one request at a time: p50 {:.3} ms p99 {:.3} ms ({} lines, {alone_syncs} fsyncs)",
        ms(percentile(&alone, 0.5)),
        ms(percentile(&alone, 0.99)),
        alone.len()
    );
    println!(
        "durable ledger write, 100 concurrent:        p50 {:.3} ms p99 {:.3} ms ({} lines, {crowd_syncs} fsyncs: {:.1} lines per fsync)",
        ms(percentile(&crowd, 0.5)),
        ms(percentile(&crowd, 0.99)),
        crowd.len(),
        crowd.len() as f64 / crowd_syncs.max(1) as f64
    );
    println!(
        "ratio 100-concurrent / alone: p50 {:.2}x, p99 {:.2}x",
        percentile(&crowd, 0.5).as_secs_f64() / percentile(&alone, 0.5).as_secs_f64(),
        percentile(&crowd, 0.99).as_secs_f64() / percentile(&alone, 0.99).as_secs_f64()
    );
}
