//! Shared helpers for the benchmark binaries.

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes on one machine.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The request body the fill tool sends for entry `i`; the hit scripts build the same string.
pub fn fill_body(prefix: &str, i: u64) -> String {
    format!(
        "{{\"model\":\"GPT-4o\",\"messages\":[{{\"role\":\"user\",\"content\":\"fill {prefix} {i}\"}}]}}"
    )
}

/// Percentile (nearest rank) of an unsorted sample, in the sample's unit.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The next accepted connection, with Nagle off. Accept errors (out of file descriptors,
/// say) are reported and retried after a short pause instead of ending the server.
pub async fn accept(listener: &tokio::net::TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let _ = sock.set_nodelay(true);
                return sock;
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// A connection that sends plain requests with whole bodies.
pub type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// The value after `name` on the command line.
pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The number after `name`, or `default`.
pub fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name).map_or(default, |s| s.parse().expect(name))
}

/// `http://host:port/path` as (host:port, path).
pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

/// An HTTP/1 connection to `host`, Nagle off; retried for about a second while the
/// server starts.
pub async fn connect(host: &str) -> Sender {
    let mut tries = 0;
    let sock = loop {
        match tokio::net::TcpStream::connect(host).await {
            Ok(s) => break s,
            Err(e) => {
                tries += 1;
                if tries > 50 {
                    panic!("connect {host}: {e}");
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    sock.set_nodelay(true).unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A permutation of `0..n` for round `round`: Fisher-Yates driven by splitmix64.
pub fn round_order(n: usize, round: u64) -> Vec<usize> {
    let mut state = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    order
}
