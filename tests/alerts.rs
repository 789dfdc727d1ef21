//! Budget alerts: a loopback webhook receiver gets each threshold a project's spend
//! crosses once per period, also across restarts; a receiver that is down or slow holds
//! up no request; `alerts.command` gets the same JSON on its stdin.

mod support;

use serde_json::Value;
use support::daemon::*;
use support::receiver::Receiver;
use support::FakeUpstream;

/// What each `q<digit>` chat request costs at the fake, in dollars: all cost the same.
fn unit() -> f64 {
    support::expected_costs(chat("q1").as_bytes()).total_micros as f64 / 1e6
}

/// `web` may spend five requests a month, `ops` two.
fn config(alerts: &str) -> String {
    let c = unit();
    format!(
        "[alerts]\n{alerts}\n\n[projects.web]\nbudget = {:.6}\nbudget_period = \"month\"\nmax_request_cost = 0.0\n\n\
         [projects.ops]\nbudget = {:.6}\nmax_request_cost = 0.0\n",
        5.0 * c,
        2.0 * c
    )
}

async fn ask(d: &Daemon, project: &str, prompt: &str) -> u16 {
    ask_in(d, project, &chat(prompt)).await.status.as_u16()
}

fn assert_alert(a: &Value, project: &str, threshold: f64, spent_units: f64, budget_units: f64) {
    let c = unit();
    let keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["at", "budget", "period", "project", "spent", "threshold"],
        "{a}"
    );
    assert_eq!(a["project"], project, "{a}");
    assert_eq!(a["threshold"], threshold, "{a}");
    assert!(
        (a["spent"].as_f64().unwrap() - spent_units * c).abs() < 1e-9,
        "{a}"
    );
    assert!(
        (a["budget"].as_f64().unwrap() - budget_units * c).abs() < 1e-9,
        "{a}"
    );
    let month = time::OffsetDateTime::now_utc().date().to_string();
    assert_eq!(a["period"].as_str(), month.get(..7), "{a}");
    assert!(a["at"].as_str().unwrap().ends_with('Z'), "{a}");
}

#[tokio::test]
async fn each_threshold_is_sent_once_also_across_a_restart() {
    let fake = FakeUpstream::start().await;
    // The first attempt is refused: the alert comes with the retry.
    let hook = Receiver::refusing_first(1).await;
    let extra = config(&format!(
        "webhook = \"{}\"\nretry_delay = \"20ms\"",
        hook.url()
    ));
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), &fake.url(), &extra).await;
    for q in ["q1", "q2", "q3"] {
        assert_eq!(ask(&d, "web", q).await, 200);
    }
    // Three of five: past half. Nothing came for one or two of five, or this would
    // have come first.
    assert_alert(&hook.next().await, "web", 0.5, 3.0, 5.0);
    assert_eq!(hook.attempts(), 2, "refused once, then accepted");
    d.stop().await;

    let d = Daemon::start_in(dir.path(), &fake.url(), &extra).await;
    assert_eq!(ask(&d, "web", "q4").await, 200);
    // Had the restart sent the half again, it would have come before this.
    assert_alert(&hook.next().await, "web", 0.8, 4.0, 5.0);
    let budgets = get(&d.url("/_chatcache/budgets")).await.json();
    assert_eq!(budgets[1]["project"], "web");
    assert_eq!(budgets[1]["alerted"], 0.8, "{budgets}");
    assert_eq!(budgets[0]["alerted"], Value::Null, "{budgets}");
    assert_eq!(ask(&d, "web", "q5").await, 200);
    assert_alert(&hook.next().await, "web", 1.0, 5.0, 5.0);
    assert_eq!(ask(&d, "web", "q6").await, 402, "the budget is spent");
    d.stop().await;

    // A third start sends nothing of web: the next alert is another project's.
    let d = Daemon::start_in(dir.path(), &fake.url(), &extra).await;
    assert_eq!(ask(&d, "ops", "q7").await, 200);
    assert_alert(&hook.next().await, "ops", 0.5, 1.0, 2.0);
    d.stop().await;
}

#[tokio::test]
async fn a_receiver_that_does_not_answer_holds_up_no_request() {
    let fake = FakeUpstream::start().await;
    let hook = Receiver::holding().await;
    let extra = config(&format!("webhook = \"{}\"", hook.url()));
    let d = Daemon::start_with(&fake.url(), &extra).await;
    for q in ["q1", "q2", "q3"] {
        assert_eq!(ask(&d, "web", q).await, 200);
    }
    // The first alert is at the receiver, which keeps it unanswered; the requests that
    // cross the next thresholds are answered all the same.
    hook.arrived().await;
    assert_eq!(ask(&d, "web", "q4").await, 200);
    assert_eq!(ask(&d, "web", "q5").await, 200);
    assert_eq!(ask(&d, "web", "q6").await, 402);
    assert_eq!(hook.attempts(), 1, "the others wait their turn");
    hook.release();
    assert_alert(&hook.next().await, "web", 0.5, 3.0, 5.0);
    assert_alert(&hook.next().await, "web", 0.8, 4.0, 5.0);
    assert_alert(&hook.next().await, "web", 1.0, 5.0, 5.0);
    d.stop().await;
}

#[tokio::test]
async fn the_command_gets_the_alerts_while_the_webhook_is_down() {
    let fake = FakeUpstream::start().await;
    // A port with nothing listening: every attempt is refused.
    let down = format!("127.0.0.1:{}", support::closed_port());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let extra = config(&format!(
        "webhook = \"http://{down}/hook\"\nretries = 1\nretry_delay = \"10ms\"\n\
         command = \"cat >> '{}'; echo >> '{}'\"",
        out.display(),
        out.display()
    ));
    let d = Daemon::start_with(&fake.url(), &extra).await;
    for q in ["q1", "q2", "q3", "q4", "q5"] {
        assert_eq!(ask(&d, "web", q).await, 200);
    }
    // The command's file is written by another process: read it until all three are
    // there (bounded).
    let lines = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    eventually("three alerts through the command", || lines().len() >= 3).await;
    let got = lines();
    assert_eq!(got.len(), 3);
    assert_alert(&got[0], "web", 0.5, 3.0, 5.0);
    assert_alert(&got[1], "web", 0.8, 4.0, 5.0);
    assert_alert(&got[2], "web", 1.0, 5.0, 5.0);
    d.stop().await;
}
