//! Answers the fake upstream holds until the test lets them go (the `hold=NAME` fault), so
//! a test can act while a request is known to be waiting upstream instead of guessing how
//! long that takes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// How long a test waits for held requests to arrive before it fails.
const ARRIVAL_DEADLINE: Duration = Duration::from_secs(10);

/// One named gate: how many answers are held at it, and whether it is open.
pub struct GateState {
    held: watch::Sender<usize>,
    open: watch::Sender<bool>,
}

impl GateState {
    fn new() -> GateState {
        GateState {
            held: watch::Sender::new(0),
            open: watch::Sender::new(false),
        }
    }

    /// Called by the fake where the answer is to wait: counts it as held, then waits until
    /// the gate opens (at once if it already is).
    pub async fn pass(&self) {
        let mut open = self.open.subscribe();
        self.held.send_modify(|n| *n += 1);
        // The sender lives as long as this state, so waiting cannot fail.
        let _ = open.wait_for(|o| *o).await;
    }
}

/// Every gate of one fake upstream, by name. A request may reach a gate before the test
/// asks for it: both find the same one.
#[derive(Default)]
pub struct Gates(Mutex<HashMap<String, Arc<GateState>>>);

impl Gates {
    pub fn get(&self, name: &str) -> Arc<GateState> {
        self.0
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(GateState::new()))
            .clone()
    }
}

/// The test's handle on a gate (from `FakeUpstream::hold`). Dropping it opens the gate, so
/// a failing test leaves nothing hanging.
pub struct Gate {
    name: String,
    state: Arc<GateState>,
}

impl Gate {
    pub fn new(name: &str, state: Arc<GateState>) -> Gate {
        Gate {
            name: name.to_string(),
            state,
        }
    }

    /// Waits until a request carrying `hold=NAME` has reached the fake and its answer is
    /// being held there.
    pub async fn arrived(&self) {
        self.arrived_n(1).await;
    }

    /// Waits until `n` answers in all have been held at this gate.
    pub async fn arrived_n(&self, n: usize) {
        let mut held = self.state.held.subscribe();
        let waited = tokio::time::timeout(ARRIVAL_DEADLINE, held.wait_for(|h| *h >= n)).await;
        match waited {
            Ok(Ok(_)) => {}
            _ => panic!(
                "{n} request(s) with hold={} should have reached the fake upstream; {} did",
                self.name,
                self.held()
            ),
        }
    }

    /// How many answers have been held at this gate so far (released ones included).
    pub fn held(&self) -> usize {
        *self.state.held.borrow()
    }

    /// Lets every held answer go on, and every later one through without waiting.
    pub fn release(&self) {
        self.state.open.send_replace(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.release();
    }
}
