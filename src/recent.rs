//! The last answered requests, kept in memory for the dashboard. Prompt text is kept only
//! when `admin.show_prompts` is on, and never leaves memory.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::cost::CostSource;
use crate::spend::{LedgerLine, Outcome};

const KEEP: usize = 500;
const PROMPT_CHARS: usize = 200;

#[derive(Debug, Clone, Serialize)]
pub struct RecentRequest {
    #[serde(with = "time::serde::rfc3339")]
    pub ts: time::OffsetDateTime,
    pub project: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub stream: bool,
    pub outcome: Outcome,
    pub status: u16,
    pub cost: Option<f64>,
    pub saved: Option<f64>,
    pub cost_source: CostSource,
    pub upstream_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

impl RecentRequest {
    fn of(kept: &Kept) -> RecentRequest {
        let line = &kept.line;
        RecentRequest {
            ts: line.ts,
            project: line.project.to_string(),
            endpoint: line.endpoint.to_string(),
            model: line.model.as_deref().map(str::to_string),
            stream: line.stream,
            outcome: line.outcome,
            status: line.status,
            cost: line.cost.as_ref().and_then(|c| c.get().parse().ok()),
            saved: line.saved.as_ref().and_then(|c| c.get().parse().ok()),
            cost_source: line.cost_source,
            upstream_ms: line.upstream_ms,
            prompt: kept.prompt.clone(),
        }
    }
}

/// A request as kept: its ledger line is shared with the ledger writer, so keeping it
/// copies nothing; it is read into a `RecentRequest` only when listed.
struct Kept {
    line: Arc<LedgerLine>,
    prompt: Option<String>,
}

#[derive(Default)]
pub struct Recent {
    ring: Mutex<VecDeque<Kept>>,
}

impl Recent {
    pub fn push(&self, line: &Arc<LedgerLine>, prompt: Option<&str>) {
        let item = Kept {
            line: Arc::clone(line),
            prompt: prompt.map(|p| p.chars().take(PROMPT_CHARS).collect()),
        };
        // Each update is one push/pop: a poisoned lock still holds a valid ring.
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(item);
    }

    /// Newest first.
    pub fn list(&self, limit: usize, project: Option<&str>) -> Vec<RecentRequest> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .rev()
            .filter(|k| project.is_none_or(|p| &*k.line.project == p))
            .take(limit)
            .map(RecentRequest::of)
            .collect()
    }
}
