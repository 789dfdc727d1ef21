//! Prometheus metrics: request outcomes, upstream latency, cache size, the team cache's
//! state, the team ledger's lag, spend by project, the ledger's room on disk, requests and
//! streams in flight; rendered in the text
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

/// Cache figures read from the cache at scrape time.
struct CacheCollector(Cache);

impl fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheCollector")
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = self.0.stats();
        let entries = ConstGauge::new(s.entries as i64);
        entries.encode(encoder.encode_descriptor(
            "chatcache_cache_entries",
            "Answers stored in the cache",
            None,
            entries.metric_type(),
        )?)?;
        let bytes = ConstGauge::new(s.bytes as i64);
        bytes.encode(encoder.encode_descriptor(
            "chatcache_cache_bytes",
            "Bytes of stored answers",
            None,
            bytes.metric_type(),
        )?)?;
        let evictions = ConstCounter::new(s.evictions);
        evictions.encode(encoder.encode_descriptor(
            "chatcache_cache_evictions",
            "Entries evicted for size or age",
            None,
            evictions.metric_type(),
        )?)?;
        let corrupt = ConstCounter::new(s.dropped_corrupt);
        corrupt.encode(encoder.encode_descriptor(
            "chatcache_cache_dropped_corrupt",
            "Entries dropped for failing their checksum",
            None,
            corrupt.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Team cache figures read from the tier at scrape time.
struct TeamCacheCollector(TeamTier);

impl fmt::Debug for TeamCacheCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TeamCacheCollector")
    }
}

impl Collector for TeamCacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = self.0.stats();
        let up = ConstGauge::new(i64::from(s.up));
        up.encode(encoder.encode_descriptor(
            "chatcache_team_cache_up",
            "1 while the team cache (Redis) answers, 0 while requests go on without it",
            None,
            up.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "chatcache_team_cache_hits",
                "Local misses answered from the team cache",
                s.hits,
            ),
            (
                "chatcache_team_cache_misses",
                "Local misses the team cache had no fresh answer for",
                s.misses,
            ),
            (
                "chatcache_team_cache_errors",
                "Failed or timed-out exchanges with the team cache",
                s.errors,
            ),
            (
                "chatcache_team_cache_dropped_damaged",
                "Team cache entries dropped for failing their checksum or seal",
                s.dropped_damaged,
            ),
            (
                "chatcache_team_cache_written",
                "Answers shared with the team cache",
                s.written,
            ),
            (
                "chatcache_team_cache_skipped",
                "Answers not shared: larger than team.max_entry, or Redis behind",
                s.skipped,
            ),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

/// The team ledger's shipping lag, read from the shipper at scrape time.
struct TeamLedgerCollector(Team);

impl fmt::Debug for TeamLedgerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TeamLedgerCollector")
    }
}

impl Collector for TeamLedgerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = self.0.stats();
        let pending = ConstGauge::new(s.pending_lines as i64);
        pending.encode(encoder.encode_descriptor(
            "chatcache_team_ledger_pending_lines",
            "Local ledger lines not yet in the team ledger",
            None,
            pending.metric_type(),
        )?)?;
        let oldest = ConstGauge::new(s.oldest_pending_seconds);
        oldest.encode(encoder.encode_descriptor(
            "chatcache_team_ledger_oldest_pending_seconds",
            "Age of the oldest line not yet in the team ledger (0 when none)",
            None,
            oldest.metric_type(),
        )?)?;
        let sent = ConstCounter::new(s.sent_lines);
        sent.encode(encoder.encode_descriptor(
            "chatcache_team_ledger_sent_lines",
            "Lines sent to the team ledger and committed (a line sent again counts again)",
            None,
            sent.metric_type(),
        )?)?;
        let up = ConstGauge::new(i64::from(s.state == "up"));
        up.encode(encoder.encode_descriptor(
            "chatcache_team_ledger_up",
            "1 when the last attempt to reach the team ledger succeeded",
            None,
            up.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The ledger's room read at scrape time: a full disk shows here before requests fail.
struct LedgerCollector(Spend);

impl fmt::Debug for LedgerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LedgerCollector")
    }
}

impl Collector for LedgerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let r = self.0.room();
        let gauges = [
            (
                "chatcache_ledger_waiting_lines",
                "Ledger lines of answers already served that wait for room on disk",
                r.waiting_lines as i64,
            ),
            (
                "chatcache_ledger_room_short",
                "1 when no more room for ledger lines can be preallocated (disk full)",
                i64::from(r.short),
            ),
            (
                "chatcache_ledger_room_bytes",
                "Bytes preallocated for ledger lines not yet written",
                r.held_bytes as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
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
        registry.register_collector(Box::new(CacheCollector(cache)));
        if let Some(team) = team {
            registry.register_collector(Box::new(TeamLedgerCollector(team)));
        }
        if let Some(tier) = team_cache {
            registry.register_collector(Box::new(TeamCacheCollector(tier)));
        }
        registry.register_collector(Box::new(LedgerCollector(spend)));
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
