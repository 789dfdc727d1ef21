//! Measuring clients for the benchmark. Prints one JSON object on stdout.
//!
//! bench-probe streams --target NAME=URL [--target NAME=URL]... [--n 200] [--frames 10]
//!     [--gap-us 2000] [--auth TOKEN] [--model M]
//!   Sequential streamed chat requests with distinct bodies, alternating between the targets
//!   (so machine noise hits all alike). Per target: time to first data frame (from sending the
//!   request) and per-frame transit (arrival time minus the `"t"` the fake upstream stamped on
//!   the frame when it sent it), for the frames after the first. Microseconds.
//!
//! bench-probe concurrent-streams --url URL [--n 1000] [--frames 20] [--gap-us 200000]
//!   Holds N streams open at once (one connection each) and waits for all to end.
//!
//! bench-probe fill --url URL --n N [--concurrency 64] [--prefix P] [--auth TOKEN]
//!   N distinct non-streamed chat requests (bodies from `fill_body(P, i)`), C at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatcache_bench_tools::{
    arg, connect, fill_body, mono_ns, num, percentile, round_order, split_url, Sender,
};
use http_body_util::{BodyExt, Full};
use hyper::Request;

fn args_all(args: &[String], name: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].clone())
        .collect()
}

struct Target {
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Target {
    let (host, path) = split_url(url);
    Target { host, path }
}

fn post(t: &Target, auth: &str, body: String) -> Request<Full<Bytes>> {
    Request::post(t.path.as_str())
        .header("host", t.host.as_str())
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {auth}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn stream_body(model: &str, nonce: &str, frames: u64, gap_us: u64) -> String {
    format!(
        "{{\"model\":\"{model}\",\"stream\":true,\"x_frames\":{frames},\"x_gap_us\":{gap_us},\"messages\":[{{\"role\":\"user\",\"content\":\"stream {nonce}\"}}]}}"
    )
}

/// Reads one SSE response; returns (first data frame arrival, [(arrival, stamped t)]), status.
async fn read_stream(
    send: &mut Sender,
    req: Request<Full<Bytes>>,
) -> Result<(u64, Vec<(u64, u64)>, Option<String>), String> {
    send.ready().await.map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let cache = resp
        .headers()
        .get("x-chatcache")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut first = 0u64;
    let mut frames = Vec::new();
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| e.to_string())?;
        let now = mono_ns();
        if let Some(d) = f.data_ref() {
            buf.extend_from_slice(d);
            while let Some(pos) = find(&buf, b"\n\n") {
                let ev: Vec<u8> = buf.drain(..pos + 2).collect();
                let ev = String::from_utf8_lossy(&ev);
                if !ev.starts_with("data:") {
                    continue;
                }
                if first == 0 {
                    first = now;
                }
                if let Some(i) = ev.find("\"t\":") {
                    let digits: String = ev[i + 4..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .collect();
                    if let Ok(t) = digits.parse::<u64>() {
                        frames.push((now, t));
                    }
                }
            }
        }
    }
    Ok((first, frames, cache))
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn summary(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    serde_json::json!({
        "n": v.len(),
        "p50": percentile(&v, 50.0),
        "p99": percentile(&v, 99.0),
        "max": v.last().copied().unwrap_or(f64::NAN),
    })
}

async fn streams(args: &[String]) {
    let targets: Vec<(String, Target)> = args_all(args, "--target")
        .iter()
        .map(|s| {
            let (n, u) = s.split_once('=').expect("--target NAME=URL");
            (n.to_string(), parse_url(u))
        })
        .collect();
    let n = num(args, "--n", 200);
    let frames = num(args, "--frames", 10);
    let gap = num(args, "--gap-us", 2000);
    let auth = arg(args, "--auth").unwrap_or_else(|| "sk-bench".into());
    let model = arg(args, "--model").unwrap_or_else(|| "GPT-4o".into());
    let run = format!("{}-{}", std::process::id(), mono_ns());
    let mut sends = Vec::new();
    for (_, t) in &targets {
        sends.push(connect(&t.host).await);
    }
    let mut ttfb: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut transit: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut errors = vec![0u64; targets.len()];
    let mut outcomes: Vec<std::collections::BTreeMap<String, u64>> =
        vec![Default::default(); targets.len()];
    for i in 0..n {
        // Each round visits the targets in a fresh order (seeded, so runs repeat), so every
        // target follows every other equally often: a server whose core sat idle through
        // the previous target's stream (the direct one touches no server core) wakes slower
        // than one that just ran. A fixed order (even rotated) keeps the same neighbours.
        for k in round_order(targets.len(), i) {
            let t = &targets[k].1;
            let body = stream_body(&model, &format!("{run}-{k}-{i}"), frames, gap);
            let t0 = mono_ns();
            match read_stream(&mut sends[k], post(t, &auth, body)).await {
                Ok((first, fr, cache)) => {
                    *outcomes[k]
                        .entry(cache.unwrap_or_else(|| "-".into()))
                        .or_default() += 1;
                    if i < 3 {
                        continue; // warm-up
                    }
                    ttfb[k].push((first - t0) as f64 / 1000.0);
                    for (arr, stamp) in fr.iter().skip(1) {
                        transit[k].push(arr.saturating_sub(*stamp) as f64 / 1000.0);
                    }
                }
                Err(e) => {
                    errors[k] += 1;
                    eprintln!("{}: {e}", targets[k].0);
                    sends[k] = connect(&t.host).await;
                }
            }
        }
    }
    let mut out = serde_json::Map::new();
    for (k, (name, _)) in targets.iter().enumerate() {
        out.insert(
            name.clone(),
            serde_json::json!({
                "ttfb_us": summary(std::mem::take(&mut ttfb[k])),
                "frame_transit_us": summary(std::mem::take(&mut transit[k])),
                "errors": errors[k],
                "x_chatcache": outcomes[k],
            }),
        );
    }
    println!("{}", serde_json::Value::Object(out));
}

async fn concurrent_streams(args: &[String]) {
    let t = Arc::new(parse_url(&arg(args, "--url").expect("--url")));
    let n = num(args, "--n", 1000);
    let frames = num(args, "--frames", 20);
    let gap = num(args, "--gap-us", 200_000);
    let auth = Arc::new(arg(args, "--auth").unwrap_or_else(|| "sk-bench".into()));
    let run = format!("{}-{}", std::process::id(), mono_ns());
    let ok = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (t, auth, ok, open, peak) = (
            t.clone(),
            auth.clone(),
            ok.clone(),
            open.clone(),
            peak.clone(),
        );
        let body = stream_body("GPT-4o", &format!("{run}-{i}"), frames, gap);
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&t.host).await;
            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let r = read_stream(&mut s, post(&t, &auth, body)).await;
            open.fetch_sub(1, Ordering::SeqCst);
            match r {
                Ok((_, fr, _)) if fr.len() as u64 == frames => {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                Ok((_, fr, _)) => eprintln!("stream {i}: {} of {frames} frames", fr.len()),
                Err(e) => eprintln!("stream {i}: {e}"),
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "{}",
        serde_json::json!({
            "streams": n, "ok": ok.load(Ordering::SeqCst),
            "peak_open": peak.load(Ordering::SeqCst),
            "seconds": start.elapsed().as_secs_f64(),
        })
    );
}

async fn fill(args: &[String]) {
    let t = Arc::new(parse_url(&arg(args, "--url").expect("--url")));
    let n = num(args, "--n", 1000);
    let conc = num(args, "--concurrency", 64);
    let start_at = num(args, "--start", 0);
    let prefix = Arc::new(arg(args, "--prefix").unwrap_or_else(|| "p".into()));
    let auth = Arc::new(arg(args, "--auth").unwrap_or_else(|| "sk-bench".into()));
    let next = Arc::new(AtomicU64::new(start_at));
    let end = start_at + n;
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (t, prefix, auth, next, errors, done) = (
            t.clone(),
            prefix.clone(),
            auth.clone(),
            next.clone(),
            errors.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&t.host).await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                let req = post(&t, &auth, fill_body(&prefix, i));
                let r = async {
                    s.ready().await?;
                    let resp = s.send_request(req).await?;
                    let ok = resp.status().is_success();
                    resp.into_body().collect().await?;
                    Ok::<bool, hyper::Error>(ok)
                }
                .await;
                match r {
                    Ok(true) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        s = connect(&t.host).await;
                    }
                }
            }
        }));
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                eprintln!("  fill: {} of {n}", done.load(Ordering::Relaxed));
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "requests": n, "ok": done.load(Ordering::Relaxed),
            "errors": errors.load(Ordering::Relaxed),
            "seconds": secs, "per_second": n as f64 / secs,
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.get(1).map(String::as_str) {
        Some("streams") => rt.block_on(streams(&args)),
        Some("concurrent-streams") => rt.block_on(concurrent_streams(&args)),
        Some("fill") => rt.block_on(fill(&args)),
        _ => {
            eprintln!("usage: bench-probe streams|concurrent-streams|fill ... (see source header)");
            std::process::exit(2);
        }
    }
}
