//! Latency of plain chat requests, several targets compared in one run; and a load
//! generator that repeats a few bodies (to make ledger lines fast). Prints one JSON object.
//!
//! bench-latency compare --target NAME=URL=BODIES [--target ...] [--n 5000] [--warmup 20]
//!     [--auth TOKEN]
//!   N rounds of sequential requests; each round sends one request to every target, in a
//!   seeded shuffle (so no target always follows the same neighbour, and machine noise falls
//!   on all alike). BODIES says which body each of a target's requests carries:
//!     seq:PREFIX[:START]  `fill_body(PREFIX, START + i)` for request i: each body once
//!                         (misses, or entries that can be found only once, like team hits)
//!     set:PREFIX:K        `fill_body(PREFIX, i % K)`: K bodies in turn (warmed: hits)
//!   Warm-up requests (the first W rounds) take bodies too but are not measured. Per target:
//!   p50/p90/p99/mean/max in microseconds (time from sending to the last byte of the
//!   answer), errors, and counts of the `x-chatcache` and `x-chatcache-tier` answers.
//!
//! bench-latency hammer --url URL --n N [--concurrency 64] [--set 100] [--prefix P]
//!   N requests over the bodies `fill_body(P, i % SET)`, C at a time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chatcache_bench_tools::{
    arg, connect, fill_body, mono_ns, num, percentile, round_order, split_url, Sender,
};
use http_body_util::{BodyExt, Full};
use hyper::Request;

fn post(host: &str, path: &str, auth: &str, body: String) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", host)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {auth}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// One request, answer read whole: (status ok, x-chatcache, x-chatcache-tier).
async fn send(
    s: &mut Sender,
    req: Request<Full<Bytes>>,
) -> Result<(bool, String, String), hyper::Error> {
    s.ready().await?;
    let resp = s.send_request(req).await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let (cache, tier) = (header("x-chatcache"), header("x-chatcache-tier"));
    let ok = resp.status().is_success();
    resp.into_body().collect().await?;
    Ok((ok, cache, tier))
}

enum Bodies {
    Seq { prefix: String, start: u64 },
    Set { prefix: String, k: u64 },
}

impl Bodies {
    fn parse(spec: &str) -> Bodies {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.as_slice() {
            ["seq", p] => Bodies::Seq {
                prefix: p.to_string(),
                start: 0,
            },
            ["seq", p, s] => Bodies::Seq {
                prefix: p.to_string(),
                start: s.parse().expect("seq:PREFIX:START"),
            },
            ["set", p, k] => Bodies::Set {
                prefix: p.to_string(),
                k: k.parse().expect("set:PREFIX:K"),
            },
            _ => panic!("bodies: seq:PREFIX[:START] or set:PREFIX:K, not {spec}"),
        }
    }

    fn body(&self, i: u64) -> String {
        match self {
            Bodies::Seq { prefix, start } => fill_body(prefix, start + i),
            Bodies::Set { prefix, k } => fill_body(prefix, i % k),
        }
    }
}

struct Target {
    name: String,
    host: String,
    path: String,
    bodies: Bodies,
    sender: Sender,
    took_us: Vec<f64>,
    errors: u64,
    cache: BTreeMap<String, u64>,
    tier: BTreeMap<String, u64>,
}

async fn compare(args: &[String]) {
    let n = num(args, "--n", 5000);
    let warmup = num(args, "--warmup", 20);
    let auth = arg(args, "--auth").unwrap_or_else(|| "sk-bench".into());
    let mut targets = Vec::new();
    for w in args.windows(2).filter(|w| w[0] == "--target") {
        // NAME=URL=BODIES; a URL holds no '='.
        let mut it = w[1].splitn(3, '=');
        let (name, url, bodies) = match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => panic!("--target NAME=URL=BODIES, not {}", w[1]),
        };
        let (host, path) = split_url(url);
        let sender = connect(&host).await;
        targets.push(Target {
            name: name.to_string(),
            host,
            path,
            bodies: Bodies::parse(bodies),
            sender,
            took_us: Vec::with_capacity(n as usize),
            errors: 0,
            cache: BTreeMap::new(),
            tier: BTreeMap::new(),
        });
    }
    assert!(!targets.is_empty(), "no --target");
    for i in 0..warmup + n {
        for k in round_order(targets.len(), i) {
            let t = &mut targets[k];
            let req = post(&t.host, &t.path, &auth, t.bodies.body(i));
            let t0 = mono_ns();
            let r = send(&mut t.sender, req).await;
            let took = (mono_ns() - t0) as f64 / 1000.0;
            match r {
                Ok((ok, cache, tier)) => {
                    if i < warmup {
                        continue;
                    }
                    if !ok {
                        t.errors += 1;
                    }
                    t.took_us.push(took);
                    *t.cache.entry(cache).or_default() += 1;
                    *t.tier.entry(tier).or_default() += 1;
                }
                Err(e) => {
                    t.errors += 1;
                    eprintln!("{}: {e}", t.name);
                    t.sender = connect(&t.host).await;
                }
            }
        }
    }
    let mut out = serde_json::Map::new();
    for t in targets {
        let mut v = t.took_us;
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        out.insert(
            t.name,
            serde_json::json!({
                "n": v.len(),
                "p50_us": percentile(&v, 50.0),
                "p90_us": percentile(&v, 90.0),
                "p99_us": percentile(&v, 99.0),
                "mean_us": mean,
                "max_us": v.last().copied().unwrap_or(f64::NAN),
                "errors": t.errors,
                "x_chatcache": t.cache,
                "x_chatcache_tier": t.tier,
            }),
        );
    }
    println!("{}", serde_json::Value::Object(out));
}

async fn hammer(args: &[String]) {
    let (host, path) = split_url(&arg(args, "--url").expect("--url"));
    let (host, path) = (Arc::new(host), Arc::new(path));
    let n = num(args, "--n", 100_000);
    let conc = num(args, "--concurrency", 64);
    let set = num(args, "--set", 100).max(1);
    let prefix = Arc::new(arg(args, "--prefix").unwrap_or_else(|| "p".into()));
    let auth = Arc::new(arg(args, "--auth").unwrap_or_else(|| "sk-bench".into()));
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (host, path, prefix, auth, next, ok, errors) = (
            host.clone(),
            path.clone(),
            prefix.clone(),
            auth.clone(),
            next.clone(),
            ok.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&host).await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let req = post(&host, &path, &auth, fill_body(&prefix, i % set));
                match send(&mut s, req).await {
                    Ok((true, _, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((false, _, _)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        s = connect(&host).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "requests": n, "ok": ok.load(Ordering::Relaxed),
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
        Some("compare") => rt.block_on(compare(&args)),
        Some("hammer") => rt.block_on(hammer(&args)),
        _ => {
            eprintln!("usage: bench-latency compare|hammer ... (see source header)");
            std::process::exit(2);
        }
    }
}
