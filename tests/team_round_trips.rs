//! How many round trips to Redis a request costs: a miss three (the lookup; the lease asked
//! for with the entry looked at again; the entry written with the lease let go), a team hit
//! one. Counted by Redis itself (`total_reads_processed`: one read per round trip), on a
//! `redis-server` of the test's own, so that nothing else reads from it.

mod support;

use support::daemon::*;
use support::redis::{team_cache_config, team_reaches, team_secret, Server};
use support::FakeUpstream;

fn config(redis: &str, dir: &std::path::Path) -> String {
    let secret = team_secret(dir, 0x5a);
    team_cache_config(redis, "rt:", Some(&secret)) + "timeout = \"1s\"\n"
}

/// What Redis has processed: reads (one per round trip) and the probes' pings.
struct Reads(redis::Connection);

impl Reads {
    fn now(&mut self) -> (i64, i64) {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .arg("commandstats")
            .query(&mut self.0)
            .unwrap();
        let field = |line: &str, name: &str| -> Option<i64> {
            line.strip_prefix(name)?
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()
        };
        let reads = info
            .lines()
            .find_map(|l| field(l, "total_reads_processed:"))
            .expect("INFO stats has total_reads_processed");
        let pings = info
            .lines()
            .find_map(|l| field(l, "cmdstat_ping:calls="))
            .unwrap_or(0);
        (reads, pings)
    }
}

/// Tries in which to count: a window with a probe's ping in it is not counted, as the
/// ping may share a read with a request's commands on the multiplexed connection (the
/// probes ping once a second; a window lasts milliseconds).
const TRIES: u64 = 5;

async fn written_reaches(d: &Daemon, n: u64) {
    team_reaches(d, &format!("{n} answers written"), |s| s.written >= n).await;
}

#[tokio::test]
async fn a_miss_costs_three_round_trips_and_a_team_hit_one() {
    let redis = Server::start();
    let fake = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(&redis.url, dir.path());
    let a = Daemon::start_with(&fake.url(), &text).await;
    let b = Daemon::start_with(&fake.url(), &text).await;
    for d in [&a, &b] {
        team_reaches(d, "up", |s| s.up).await;
    }
    let mut reads = Reads(redis.conn());
    let body = |n: u64| chat(&format!("counted round trips {n}"));

    let mut miss_trips = None;
    let mut written = 0;
    while miss_trips.is_none() && written < TRIES {
        written += 1;
        let (reads0, pings0) = reads.now();
        let miss = ask(&a, &body(written)).await;
        assert_eq!(miss.header("x-chatcache"), Some("miss"));
        // Counted once its last exchange has been answered: the write, which lets the
        // lease go in the same round trip.
        written_reaches(&a, written).await;
        let (reads1, pings1) = reads.now();
        // Less this look's own INFO.
        miss_trips = (pings1 == pings0).then_some(reads1 - reads0 - 1);
    }
    assert_eq!(miss_trips, Some(3), "round trips for a miss");
    let lease: Vec<String> = redis::cmd("KEYS")
        .arg("rt:lease:*")
        .query(&mut reads.0)
        .unwrap();
    assert!(lease.is_empty(), "the lease went with the write: {lease:?}");
    // An entry for each try of the team hit.
    for n in written + 1..=TRIES {
        ask(&a, &body(n)).await;
        written_reaches(&a, n).await;
    }

    let mut hit_trips = None;
    for n in 1..=TRIES {
        let (reads0, pings0) = reads.now();
        let hit = ask(&b, &body(n)).await;
        assert_eq!(hit.header("x-chatcache-tier"), Some("team"));
        let (reads1, pings1) = reads.now();
        if pings1 == pings0 {
            hit_trips = Some(reads1 - reads0 - 1);
            break;
        }
    }
    assert_eq!(hit_trips, Some(1), "round trips for a team hit");
    a.stop().await;
    b.stop().await;
}
