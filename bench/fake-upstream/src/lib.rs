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
