//! Prometheus metrics: request outcomes, upstream latency, cache size, the team cache's
//! state, the team ledger's lag and its PostgreSQL's reachability, spend by project, the
//! ledger's room on disk, requests and streams in flight; rendered in the text
//! exposition format.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::cache::redis_tier::TeamTier;
use crate::cache::Cache;
use crate::spend::team::Team;
use crate::spend::Spend;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    outcome: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectLabels {
    project: Arc<str>,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_seconds: Histogram,
    first_byte_seconds: Histogram,
    cost: Family<ProjectLabels, Counter<f64, AtomicU64>>,
    saved: Family<ProjectLabels, Counter<f64, AtomicU64>>,
    in_flight: Gauge,
    streams: Gauge,
}

/// Decrements its gauge when dropped (a request answered, a stream ended).
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One figure read at scrape time.
enum Figure {
    Gauge(&'static str, &'static str, i64),
    FloatGauge(&'static str, &'static str, f64),
    Counter(&'static str, &'static str, u64),
}

/// Figures read from a part of the daemon (the cache, the ledger's room, the team tier)
/// when the metrics are scraped, so they are never stale and cost nothing in between.
struct Scraped<F> {
    what: &'static str,
    read: F,
}

impl<F> fmt::Debug for Scraped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scraped({})", self.what)
    }
}

impl<F: Fn() -> Vec<Figure> + Send + Sync + 'static> Collector for Scraped<F> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for figure in (self.read)() {
            match figure {
                Figure::Gauge(name, help, value) => {
                    let g = ConstGauge::new(value);
                    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
                }
                Figure::FloatGauge(name, help, value) => {
                    let g = ConstGauge::new(value);
                    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
                }
                Figure::Counter(name, help, value) => {
                    let c = ConstCounter::new(value);
                    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
                }
            }
        }
        Ok(())
    }
}

fn scraped<F>(what: &'static str, read: F) -> Box<Scraped<F>>
where
    F: Fn() -> Vec<Figure> + Send + Sync + 'static,
{
    Box::new(Scraped { what, read })
}

fn cache_figures(cache: &Cache) -> Vec<Figure> {
    let s = cache.stats();
    vec![
        Figure::Gauge(
            "chatcache_cache_entries",
            "Answers stored in the cache",
            s.entries as i64,
        ),
        Figure::Gauge(
            "chatcache_cache_bytes",
            "Bytes of stored answers",
            s.bytes as i64,
        ),
        Figure::Counter(
            "chatcache_cache_evictions",
            "Entries evicted for size or age",
            s.evictions,
        ),
        Figure::Counter(
            "chatcache_cache_dropped_corrupt",
            "Entries dropped for failing their checksum",
            s.dropped_corrupt,
        ),
    ]
}

/// The ledger's room: a full disk shows here before requests fail.
fn ledger_figures(spend: &Spend) -> Vec<Figure> {
    let r = spend.room();
    vec![
        Figure::Gauge(
            "chatcache_ledger_waiting_lines",
            "Ledger lines of answers already served that wait for room on disk",
            r.waiting_lines as i64,
        ),
        Figure::Gauge(
            "chatcache_ledger_room_short",
            "1 when no more room for ledger lines can be preallocated (disk full)",
            i64::from(r.short),
        ),
        Figure::Gauge(
            "chatcache_ledger_room_bytes",
            "Bytes preallocated for ledger lines not yet written",
            r.held_bytes as i64,
        ),
    ]
}

fn team_cache_figures(tier: &TeamTier) -> Vec<Figure> {
    let s = tier.stats();
    vec![
        Figure::Gauge(
            "chatcache_team_cache_up",
            "1 while the team cache (Redis) answers, 0 while requests go on without it",
            i64::from(s.up),
        ),
        Figure::Counter(
            "chatcache_team_cache_hits",
            "Local misses answered from the team cache",
            s.hits,
        ),
        Figure::Counter(
            "chatcache_team_cache_misses",
            "Local misses the team cache had no fresh answer for",
            s.misses,
        ),
        Figure::Counter(
            "chatcache_team_cache_errors",
            "Failed or timed-out exchanges with the team cache",
            s.errors,
        ),
        Figure::Counter(
            "chatcache_team_cache_dropped_damaged",
            "Team cache entries dropped for failing their checksum or seal",
            s.dropped_damaged,
        ),
        Figure::Counter(
            "chatcache_team_cache_written",
            "Answers shared with the team cache",
            s.written,
        ),
        Figure::Counter(
            "chatcache_team_cache_skipped",
            "Answers not shared: larger than team.max_entry, or Redis behind",
            s.skipped,
        ),
    ]
}

/// The team ledger's shipping lag, and whether team budgets can be checked.
fn team_ledger_figures(team: &Team) -> Vec<Figure> {
    let s = team.stats();
    vec![
        Figure::Gauge(
            "chatcache_team_postgres_up",
            "1 while the team's PostgreSQL answers (team budgets are checked across the team), \
             0 while it does not (team.budget_when_down applies)",
            i64::from(team.reachability().is_up()),
        ),
        Figure::Gauge(
            "chatcache_team_ledger_pending_lines",
            "Local ledger lines not yet in the team ledger",
            s.pending_lines as i64,
        ),
        Figure::FloatGauge(
            "chatcache_team_ledger_oldest_pending_seconds",
            "Age of the oldest line not yet in the team ledger (0 when none)",
            s.oldest_pending_seconds,
        ),
        Figure::Counter(
            "chatcache_team_ledger_sent_lines",
            "Lines sent to the team ledger and committed (a line sent again counts again)",
            s.sent_lines,
        ),
        Figure::Gauge(
            "chatcache_team_ledger_up",
            "1 when the last attempt to reach the team ledger succeeded",
            i64::from(s.state == "up"),
        ),
    ]
}

impl Metrics {
    pub fn new(
        cache: Cache,
        spend: Spend,
        team: Option<Team>,
        team_cache: Option<TeamTier>,
    ) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "chatcache_requests",
            "Requests answered, by endpoint, cache outcome and status",
            requests.clone(),
        );
        let upstream_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "chatcache_upstream_seconds",
            "Time from request to the end of upstream's answer",
            upstream_seconds.clone(),
        );
        let first_byte_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "chatcache_upstream_first_byte_seconds",
            "Time from request to upstream's response head",
            first_byte_seconds.clone(),
        );
        let cost = Family::<ProjectLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "chatcache_spend_cost",
            "Money spent upstream, by project (as upstream reported or estimated)",
            cost.clone(),
        );
        let saved = Family::<ProjectLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "chatcache_spend_saved",
            "Money saved by cached answers, by project",
            saved.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "chatcache_requests_in_flight",
            "Requests being handled",
            in_flight.clone(),
        );
        let streams = Gauge::default();
        registry.register(
            "chatcache_streams_in_flight",
            "Streamed answers being sent",
            streams.clone(),
        );
        registry.register_collector(scraped("cache", move || cache_figures(&cache)));
        registry.register_collector(scraped("ledger", move || ledger_figures(&spend)));
        if let Some(team) = team {
            registry.register_collector(scraped("team ledger", move || team_ledger_figures(&team)));
        }
        if let Some(tier) = team_cache {
            registry.register_collector(scraped("team cache", move || team_cache_figures(&tier)));
        }
        Metrics {
            registry,
            requests,
            upstream_seconds,
            first_byte_seconds,
            cost,
            saved,
            in_flight,
            streams,
        }
    }

    pub fn request(&self, endpoint: &'static str, outcome: &str, status: u16) {
        let outcome = match outcome {
            "hit" => "hit",
            "miss" => "miss",
            "coalesced" => "coalesced",
            "refresh" => "refresh",
            "bypass" => "bypass",
            _ => "error",
        };
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                outcome,
                status,
            })
            .inc();
    }

    pub fn first_byte(&self, d: Duration) {
        self.first_byte_seconds.observe(d.as_secs_f64());
    }

    pub fn upstream_done(&self, d: Duration) {
        self.upstream_seconds.observe(d.as_secs_f64());
    }

    pub fn spend(&self, project: &Arc<str>, cost: f64, saved: f64) {
        let labels = ProjectLabels {
            project: project.clone(),
        };
        if cost > 0.0 {
            self.cost.get_or_create(&labels).inc_by(cost);
        }
        if saved > 0.0 {
            self.saved.get_or_create(&labels).inc_by(saved);
        }
    }

    pub fn track_request(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub fn track_stream(&self) -> InFlight {
        self.streams.inc();
        InFlight(self.streams.clone())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("could not encode metrics");
        }
        out
    }
}
