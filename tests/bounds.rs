//! Answers larger than `cache.max_entry`: passed through whole, never stored, still
//! accounted from their cost fields, and read by coalesced followers to the last byte; and
//! answers stored in many pieces, replayed from them byte for byte.

mod support;

use support::daemon::*;
use support::{api, FakeUpstream, FAULT_HEADER, WORDS_HEADER};

const SMALL_ENTRY: &str = "[cache]\nmax_entry = \"8 KiB\"\n";
/// Words of an answer far over 8 KiB, as a stream and as a plain answer.
const MANY_WORDS: &str = "8000";

/// What the fake answers when asked directly.
async fn direct(fake: &FakeUpstream, body: &str) -> Resp {
    post_with(
        &format!("{}/chat/completions", fake.url()),
        body,
        &[
            ("authorization", KEY),
            (WORDS_HEADER, MANY_WORDS),
            (FAULT_HEADER, "gap=0"),
        ],
    )
    .await
}

async fn through(d: &Daemon, body: &str, faults: &str) -> Resp {
    post_with(
        &d.url("/chat/completions"),
        body,
        &[
            ("authorization", KEY),
            (WORDS_HEADER, MANY_WORDS),
            (FAULT_HEADER, faults),
        ],
    )
    .await
}

fn expected_cost(body: &str) -> String {
    let words = MANY_WORDS.parse().unwrap();
    api::answer(body.as_bytes(), Some(words))
        .unwrap()
        .costs
        .total_tokens_cost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_past_max_entry_pass_whole_unstored_and_accounted() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), SMALL_ENTRY).await;
    for body in [chat_stream("a long poem"), chat("a long essay")] {
        let want = direct(&fake, &body).await;
        assert!(want.body.len() > 8 * 8 * 1024, "{} bytes", want.body.len());
        for _ in 0..2 {
            let r = through(&d, &body, "gap=0").await;
            assert_eq!(r.status, 200);
            assert_eq!(r.header("x-chatcache"), Some("miss"), "never stored");
            assert!(r.body == want.body, "the answer changed on its way");
        }
    }
    d.app.cache.settle().unwrap();
    assert_eq!(d.app.cache.stats().entries, 0);
    let lines = ledger_lines(&d.data_dir);
    assert_eq!(lines.len(), 4);
    for (line, body) in lines.iter().zip([
        chat_stream("a long poem"),
        chat_stream("a long poem"),
        chat("a long essay"),
        chat("a long essay"),
    ]) {
        assert_eq!(line["cost_source"], "upstream", "{line}");
        let want: f64 = expected_cost(&body).parse().unwrap();
        assert_eq!(line["cost"].as_f64(), Some(want), "{line}");
        assert_eq!(line["incomplete"], false);
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_an_answer_that_outgrows_the_bound_get_every_byte() {
    let fake = FakeUpstream::start().await;
    let d = Daemon::start_with(&fake.url(), SMALL_ENTRY).await;
    for body in [chat_stream("shared poem"), chat("shared essay")] {
        let want = direct(&fake, &body).await;
        fake.clear_requests();
        // The answer is slow to start: whichever request leads, the others join it before
        // anything of it is sent.
        let slow = "slow-first-byte=400,gap=0";
        let leader = through(&d, &body, slow);
        let followers = futures_util::future::join_all((0..3).map(|_| through(&d, &body, slow)));
        let (first, rest) = tokio::join!(leader, followers);
        let mut outcomes = vec![first.header("x-chatcache").unwrap().to_string()];
        for r in std::iter::once(&first).chain(&rest) {
            assert_eq!(r.status, 200);
            assert!(r.body == want.body, "a reader missed bytes");
        }
        outcomes.extend(
            rest.iter()
                .map(|r| r.header("x-chatcache").unwrap().to_string()),
        );
        outcomes.sort();
        assert_eq!(outcomes, ["coalesced", "coalesced", "coalesced", "miss"]);
        assert_eq!(fake.count("/chat/completions"), 1, "one upstream call");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stored_in_pieces_are_hits_byte_for_byte_after_a_restart() {
    let fake = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bodies = [chat_stream("a stored poem"), chat("a stored essay")];
    let mut wants = Vec::new();
    let d = Daemon::start_in(dir.path(), &fake.url(), "").await;
    for body in &bodies {
        let want = direct(&fake, body).await;
        // More than one of the store's 64 KiB pieces.
        assert!(want.body.len() > 64 * 1024, "{} bytes", want.body.len());
        let r = through(&d, body, "gap=0").await;
        assert_eq!(r.header("x-chatcache"), Some("miss"));
        assert!(r.body == want.body, "the answer changed on its way");
        wants.push(want);
    }
    d.app.cache.settle().unwrap();
    assert_eq!(d.app.cache.stats().entries, 2);
    d.stop().await;

    // A new process's memory holds nothing: the hits are read from the store.
    let d = Daemon::start_in(dir.path(), &fake.url(), "").await;
    fake.clear_requests();
    for (body, want) in bodies.iter().zip(&wants) {
        let r = through(&d, body, "gap=0").await;
        assert_eq!(r.header("x-chatcache"), Some("hit"));
        assert_eq!(r.body.len(), want.body.len());
        assert!(r.body == want.body, "the stored answer changed");
    }
    assert_eq!(fake.count("/chat/completions"), 0);
    d.stop().await;
}
