//! Budget alerts: when a project's spend in its budget period crosses one of
//! `alerts.thresholds`, the alert's JSON goes to the webhook and/or command — once per
//! threshold per period, also across restarts (the alerts delivered are kept in the
//! store). Crossings are found on the request path without waiting on anything; the
//! alerts wait in a bounded queue for a background task that delivers them.

mod deliver;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::spend::PeriodUse;
use crate::store::{Space, Store};
use deliver::Deliverer;

/// Alerts that may wait for delivery; a crossing found with the queue full is found
/// again with the project's next request.
const QUEUE: usize = 256;

const PREFIX: &str = "alert:";

/// What is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub project: String,
    /// The budget period: "YYYY-MM-DD", "YYYY-MM" or "total".
    pub period: String,
    pub budget: f64,
    pub spent: f64,
    pub threshold: f64,
    /// RFC 3339.
    pub at: String,
}

/// (project, period, threshold bits): one alert's identity.
type Claim = (String, String, u64);

pub struct Alerts {
    thresholds: Vec<f64>,
    store: Store,
    /// Alerts delivered (loaded from the store) or on their way.
    claimed: Mutex<HashSet<Claim>>,
    tx: mpsc::Sender<Alert>,
    rx: Mutex<Option<mpsc::Receiver<Alert>>>,
    deliverer: Option<Arc<Deliverer>>,
    stop: CancellationToken,
    worker: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn claim_key((project, period, bits): &Claim) -> String {
    format!("{PREFIX}{project}:{period}:{:016x}", bits)
}

fn parse_claim(key: &[u8]) -> Option<Claim> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(PREFIX)?;
    let mut parts = rest.rsplitn(3, ':');
    let bits = u64::from_str_radix(parts.next()?, 16).ok()?;
    let period = parts.next()?.to_string();
    let project = parts.next()?.to_string();
    Some((project, period, bits))
}

impl Alerts {
    /// Reads which alerts were delivered before. Blocking.
    pub fn open(config: &Config, store: Store) -> anyhow::Result<Alerts> {
        let mut claimed = HashSet::new();
        store.scan_prefix(Space::Meta, PREFIX.as_bytes(), |k, _| {
            claimed.extend(parse_claim(k));
            true
        })?;
        let deliverer = if config.alerts.enabled() {
            Some(Arc::new(Deliverer::new(&config.alerts, &config.upstream)?))
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok(Alerts {
            thresholds: config.alerts.thresholds.clone(),
            store,
            claimed: Mutex::new(claimed),
            tx,
            rx: Mutex::new(Some(rx)),
            deliverer,
            stop: CancellationToken::new(),
            worker: tokio::sync::Mutex::new(None),
        })
    }

    /// The highest threshold `used` has reached (for the dashboard), if any.
    pub fn reached(&self, used: &PeriodUse) -> Option<f64> {
        self.crossed(used).last().copied()
    }

    fn crossed<'a>(&'a self, used: &PeriodUse) -> impl DoubleEndedIterator<Item = &'a f64> {
        let (spent, budget) = (used.spent, used.budget);
        self.thresholds
            .iter()
            .filter(move |t| budget > 0.0 && spent >= **t * budget - 1e-12)
    }

    /// Queues an alert for every threshold `used` has crossed that was not alerted yet in
    /// its period. Never waits.
    pub fn check(&self, project: &str, used: &PeriodUse) {
        if self.deliverer.is_none() {
            return;
        }
        for &threshold in self.crossed(used) {
            let claim = (
                project.to_string(),
                used.period.clone(),
                threshold.to_bits(),
            );
            let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
            if !claimed.insert(claim.clone()) {
                continue;
            }
            let alert = Alert {
                project: project.to_string(),
                period: used.period.clone(),
                budget: used.budget,
                spent: (used.spent * 1e12).round() / 1e12,
                threshold,
                at: now_rfc3339(),
            };
            if self.tx.try_send(alert).is_err() {
                claimed.remove(&claim);
                tracing::warn!(
                    project,
                    threshold,
                    "the budget alert queue is full; trying again with the project's next request"
                );
            }
        }
    }

    /// Starts the task that delivers queued alerts (once; later calls do nothing).
    pub async fn start(self: &Arc<Self>) {
        let Some(deliverer) = self.deliverer.clone() else {
            return;
        };
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let alert = tokio::select! {
                    a = rx.recv() => a,
                    _ = me.stop.cancelled() => None,
                };
                let Some(alert) = alert else { break };
                me.deliver(&deliverer, alert).await;
            }
        });
        *self.worker.lock().await = Some(task);
    }

    async fn deliver(&self, deliverer: &Deliverer, alert: Alert) {
        // An Alert always serializes (strings and numbers).
        let json = Bytes::from(serde_json::to_vec(&alert).unwrap_or_default());
        match deliverer.deliver(json.clone(), &self.stop).await {
            Ok(()) => {
                let claim = (
                    alert.project.clone(),
                    alert.period.clone(),
                    alert.threshold.to_bits(),
                );
                let store = self.store.clone();
                let kept = tokio::task::spawn_blocking(move || {
                    store.put(Space::Meta, claim_key(&claim).as_bytes(), &json)
                })
                .await;
                if !matches!(kept, Ok(Ok(()))) {
                    tracing::warn!(project = %alert.project, "could not note a delivered budget alert; it may be sent again after a restart");
                }
            }
            // Left claimed: not tried again until the next start, which finds it undelivered.
            Err(e) => {
                tracing::error!(project = %alert.project, threshold = alert.threshold, error = %e,
                "could not deliver a budget alert; giving up until the daemon restarts")
            }
        }
    }

    /// Stops the delivery task: an attempt under way is finished (and noted), waits
    /// between retries are cut short; alerts still queued are sent after the next start.
    pub async fn close(&self) {
        self.stop.cancel();
        if let Some(task) = self.worker.lock().await.take() {
            let _ = task.await;
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_through_their_keys() {
        let c: Claim = ("web.v2".into(), "2026-12".into(), 0.8f64.to_bits());
        assert_eq!(parse_claim(claim_key(&c).as_bytes()), Some(c));
        assert_eq!(parse_claim(b"credits:fp-1:00"), None);
    }

    #[test]
    fn each_threshold_is_claimed_once_per_period() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let text = "[alerts]\ncommand = \"true\"\nthresholds = [0.5, 0.8]\n";
        let config = Config::from_parts(
            None,
            Some(text),
            crate::config::Overrides {
                data_dir: Some(dir.path().into()),
                ..Default::default()
            },
            |_| None,
        )
        .unwrap();
        let alerts = Alerts::open(&config, store).unwrap();
        let used = |spent: f64, period: &str| PeriodUse {
            budget: 10.0,
            spent,
            period: period.into(),
        };
        alerts.check("web", &used(4.0, "2026-12"));
        alerts.check("web", &used(5.0, "2026-12"));
        alerts.check("web", &used(9.0, "2026-12"));
        alerts.check("web", &used(9.5, "2026-12"));
        alerts.check("web", &used(6.0, "2027-01"));
        assert_eq!(alerts.reached(&used(9.0, "x")), Some(0.8));
        assert_eq!(alerts.reached(&used(1.0, "x")), None);
        let mut rx = alerts.rx.lock().unwrap().take().unwrap();
        let mut got = Vec::new();
        while let Ok(a) = rx.try_recv() {
            got.push((a.period, a.threshold, a.spent));
        }
        assert_eq!(
            got,
            vec![
                ("2026-12".into(), 0.5, 5.0),
                ("2026-12".into(), 0.8, 9.0),
                ("2027-01".into(), 0.5, 6.0)
            ]
        );
    }
}
