//! Budgets under concurrency: requests in flight hold their worst-case cost, so a burst of
//! distinct misses cannot spend past the budget before the first cost is known.

mod support;

use support::daemon::*;
use support::{FakeUpstream, FAULT_HEADER};

/// Concurrent misses with distinct prompts; returns the statuses and the ledger's spend.
/// Each answer is slow to start, so that the requests are all in flight at once.
async fn burst(d: &Daemon, n: usize, body: impl Fn(usize) -> String) -> (Vec<u16>, f64) {
    let requests = (0..n).map(|i| {
        let body = body(i);
        async move {
            post_with(
                &d.url("/p/tight/chat/completions"),
                &body,
                &[
                    ("authorization", KEY),
                    (FAULT_HEADER, "slow-first-byte=300"),
                ],
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    for a in &answers {
        if a.status == 402 {
            assert_eq!(a.json()["error"]["code"], "budget_exceeded", "{}", a.text());
        }
    }
    let spent = ledger_lines(&d.data_dir)
        .iter()
        .filter(|l| l["project"] == "tight")
        .map(|l| l["cost"].as_f64().unwrap_or(0.0))
        .sum();
    (answers.iter().map(|a| a.status.as_u16()).collect(), spent)
}

fn chat_capped(i: usize, max_tokens: u64) -> String {
    serde_json::json!({
        "model": "GPT-4 Turbo",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": format!("distinct question {i}")}],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_misses_spend_no_more_than_the_budget() {
    let fake = FakeUpstream::start().await;
    let budget = 0.03;
    let config = format!("[projects.tight]\nbudget = {budget}\nbudget_period = \"day\"\n");
    let d = Daemon::start_with(&fake.url(), &config).await;
    // Prices come from a /models answer that passed through the daemon.
    assert_eq!(get(&d.url("/models")).await.status, 200);
    let (statuses, spent) = burst(&d, 50, |i| chat_capped(i, 50)).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!(admitted + refused, 50, "{statuses:?}");
    assert!(admitted >= 1 && refused >= 1, "{statuses:?}");
    assert_eq!(
        fake.count("/chat/completions"),
        admitted,
        "refused requests never went upstream"
    );
    // Each answer costs less than its worst case (its prompt at a token a character
    // and all 50 tokens), so the reservations keep spend within the budget itself.
    assert!(spent > 0.0 && spent <= budget, "spent {spent} of {budget}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_max_tokens_a_request_reserves_the_projects_ceiling() {
    let fake = FakeUpstream::start().await;
    let config = "[projects.tight]\nbudget = 0.02\nmax_request_cost = 0.006\n";
    let d = Daemon::start_with(&fake.url(), config).await;
    // At most three ceilings fit the budget at once.
    let (statuses, spent) = burst(&d, 10, |i| chat(&format!("uncapped {i}"))).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!((1..10).contains(&admitted), "{statuses:?}");
    assert!(spent <= 0.02 + 0.006, "spent {spent}");
    d.stop().await;
}

#[tokio::test]
async fn the_reservation_of_a_failed_request_is_released() {
    let fake = FakeUpstream::start().await;
    let config = "[projects.tight]\nbudget = 0.02\nmax_request_cost = 0.015\n";
    let d = Daemon::start_with(&fake.url(), config).await;
    let url = d.url("/p/tight/chat/completions");
    let failed = post_with(
        &url,
        &chat("fails upstream"),
        &[("authorization", KEY), (FAULT_HEADER, "status=500")],
    )
    .await;
    assert_eq!(failed.status, 500);
    // Had the first reservation been kept, 0.015 + 0.015 would not fit 0.02.
    let r = post_with(&url, &chat("after the failure"), &[("authorization", KEY)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_with(&url, &chat("after the failure"), &[("authorization", KEY)]).await;
    assert_eq!(r.header("x-chatcache"), Some("hit"), "hits reserve nothing");
    d.stop().await;
}
