//! Tests of the ledger's room: what is preallocated, claims on it, and lines that wait for
//! room while the disk is full.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::room::TARGET;
use super::*;
use crate::store::Store;

fn open(dir: &Path) -> Spend {
    let store = Store::open(&dir.join("db"), 1 << 20).unwrap();
    Spend::open(dir, store, BTreeMap::new()).unwrap()
}

/// A line stamped now: the room is kept in this month's file.
fn now_line(outcome: Outcome) -> LedgerLine {
    LedgerLine::new("p", "/chat/completions", outcome, 200)
}

fn this_months_file(dir: &Path) -> PathBuf {
    dir.join("ledger")
        .join(ledger::file_name_at(OffsetDateTime::now_utc()))
}

#[tokio::test]
async fn room_is_preallocated_past_the_end_and_readers_see_only_lines() {
    let dir = tempfile::tempdir().unwrap();
    let spend = open(dir.path());
    let want = line_room("p", None);
    let room = spend.hold_room(want).await.unwrap();
    let state = spend.room();
    assert!(state.held_bytes >= TARGET, "{state:?}");
    assert_eq!(state.claimed_bytes, want);
    let meta = std::fs::metadata(this_months_file(dir.path())).unwrap();
    assert_eq!(meta.len(), 0, "the preallocation changed the file's length");
    assert!(
        meta.blocks() * 512 >= TARGET,
        "only {} bytes allocated",
        meta.blocks() * 512
    );

    spend
        .record_reserved(now_line(Outcome::Miss), None, Some(room))
        .await
        .unwrap();
    let after = spend.room();
    assert_eq!(after.claimed_bytes, 0, "a written line keeps its claim");
    let len = std::fs::metadata(this_months_file(dir.path()))
        .unwrap()
        .len();
    assert_eq!(after.held_bytes, state.held_bytes - len);

    // Room claimed by a request that dies is given back.
    let unused = spend.hold_room(100).await.unwrap();
    assert_eq!(spend.room().claimed_bytes, 100);
    drop(unused);
    assert_eq!(spend.room().claimed_bytes, 0);
    spend.close().await;

    let (lines, stats) = read_all(&dir.path().join("ledger")).unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!((stats.skipped, stats.torn_tail), (0, false));
}

#[tokio::test]
async fn on_a_full_disk_claims_stop_at_the_held_room_and_hit_lines_wait_until_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let spend = open(dir.path());
    // Once a claim has been answered, the writer has made its first preallocation.
    drop(spend.hold_room(1).await.unwrap());
    let held = spend.room().held_bytes;
    spend.inner.shared.disk_full.store(true, Ordering::SeqCst);

    let mut rooms = Vec::new();
    let refused = loop {
        match spend.hold_room(1024).await {
            Ok(r) => rooms.push(r),
            Err(e) => break e,
        }
        assert!(rooms.len() as u64 <= held / 1024, "more claimed than held");
    };
    assert!(matches!(refused, SpendError::NoRoom), "{refused:?}");
    assert_eq!(rooms.len() as u64, held / 1024);
    assert!(spend.room().short);

    // Every claimed line is written, the disk full or not.
    let misses = rooms.len();
    for room in rooms {
        spend
            .record_reserved(now_line(Outcome::Miss), None, Some(room))
            .await
            .unwrap();
    }
    // Hit lines take what room is left unclaimed, then wait, up to the limit.
    let mut hits = 0;
    while spend.takes_hits() {
        for _ in 0..256 {
            assert!(spend.record_nowait(now_line(Outcome::Hit)).is_none());
        }
        hits += 256;
        spend.fold_rollups();
        assert!(hits <= 20 * WAITING_CAP, "hits never stopped");
    }
    let waiting = spend.room().waiting_lines as usize;
    assert!(waiting >= WAITING_CAP, "{waiting}");
    let (written, _) = read_all(&dir.path().join("ledger")).unwrap();
    assert_eq!(
        written
            .iter()
            .filter(|l| l.outcome == Outcome::Miss)
            .count(),
        misses
    );
    assert_eq!(written.len() + waiting, misses + hits, "a line was dropped");

    // Space returns: the writer finds it on its own and writes what waited.
    spend.inner.shared.disk_full.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + 5 * room::RETRY;
    // Polled: the writer retries on a timer, with nothing to wait on from here.
    while spend.room().waiting_lines > 0 {
        assert!(Instant::now() < deadline, "waiting lines never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spend.takes_hits());
    assert!(!spend.room().short);
    spend.close().await;
    let (lines, stats) = read_all(&dir.path().join("ledger")).unwrap();
    assert_eq!(lines.len(), misses + hits);
    assert_eq!((stats.skipped, stats.torn_tail), (0, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_claims_far_past_the_room_held_all_get_room() {
    let dir = tempfile::tempdir().unwrap();
    let spend = open(dir.path());
    // A thousand requests at once (a thousand streams opened together): eight times the
    // room kept preallocated. Every one is admitted; none is refused while the disk has
    // room.
    let want = line_room("p", Some("GPT-4o"));
    let claims: Vec<_> = (0..1_000)
        .map(|_| {
            let spend = spend.clone();
            tokio::spawn(async move { spend.hold_room(want).await })
        })
        .collect();
    let mut rooms = Vec::new();
    for c in claims {
        rooms.push(
            c.await
                .unwrap()
                .expect("refused although the disk has room"),
        );
    }
    assert_eq!(spend.room().claimed_bytes, 1_000 * want);
    drop(rooms);
    assert_eq!(spend.room().claimed_bytes, 0);
}
