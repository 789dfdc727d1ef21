//! The shared state of a running daemon, opened from a `Config`: storage, cache, ledger,
//! upstream client, credentials. Also the opening of the data directory itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use http::HeaderValue;

use crate::alerts::Alerts;
use crate::cache::flight::Flights;
use crate::cache::redis_tier::TeamTier;
use crate::cache::sled_store::SledStore;
use crate::cache::Cache;
use crate::config::Config;
use crate::cost::Prices;
use crate::metrics::Metrics;
use crate::recent::Recent;
use crate::request::json::ParseMemo;
use crate::secret::{Fingerprinter, TeamSecret};
use crate::spend::team::Team;
use crate::spend::{LedgerLine, Reservation, Room, Spend, SpendError};
use crate::store::{Store, StoreError};
use crate::upstream::Upstream;

pub struct App {
    pub config: Config,
    /// The data dir's database (the cache's answers, rollups, daemon facts).
    pub store: Store,
    pub upstream: Upstream,
    pub cache: Cache,
    /// The answer cache shared with the team, when `team.redis` is set.
    pub team_cache: Option<TeamTier>,
    pub flights: Arc<Flights>,
    pub spend: Spend,
    /// The team ledger on PostgreSQL, when `[team] postgres` is set.
    pub team: Option<Team>,
    pub fingerprints: Fingerprinter,
    /// `Bearer <upstream key>` when the daemon holds the key (marked sensitive).
    pub held_key: Option<HeaderValue>,
    /// Model prices from the last `/models` answer seen, for cost estimates.
    pub prices: RwLock<Option<Arc<Prices>>>,
    /// Upstream exchanges in progress (they outlive clients that leave), for the drain.
    pub exchanges: tokio_util::task::TaskTracker,
    pub metrics: Metrics,
    pub recent: Recent,
    /// JSON bodies seen recently, already parsed.
    pub parsed: ParseMemo,
    /// Budget alerts: crossings found, and their delivery in the background.
    pub alerts: Arc<Alerts>,
}

impl App {
    pub fn open(config: Config) -> anyhow::Result<Arc<App>> {
        // cache.memory is shared: half for the in-memory tier of recently served answers, a
        // quarter for the store's page cache, a quarter for remembered parses.
        let hot_bytes = config.cache.memory / 2;
        let parse_bytes = config.cache.memory / 4;
        let (store, own_fingerprints) = open_data_dir(
            &config.data_dir,
            config.cache.memory - hot_bytes - parse_bytes,
        )?;
        let (fingerprints, team_cache) = open_team(&config, own_fingerprints)?;
        warn_of_earlier_answer_files(&config.data_dir);
        let limits = crate::cache::Limits {
            max_bytes: config.cache.max_bytes,
            max_age: config.cache.max_age,
            hot_bytes,
            pending_bytes: crate::config::PENDING_LIMIT,
        };
        let answers = SledStore::new(store.clone(), config.data_dir.join("bodies"));
        let cache = Cache::open(Box::new(answers), limits).context("cannot read the cache")?;
        let spend = Spend::open(&config.data_dir, store.clone(), config.projects.clone())
            .map_err(|e| anyhow::anyhow!("cannot open the spend ledger: {e}"))?;
        let team = Team::open(&config.team, store.clone(), &spend)
            .map_err(|e| anyhow::anyhow!("cannot set up the team ledger: {e}"))?;
        let held_key = load_held_key(&config)?;
        let alerts = Arc::new(Alerts::open(&config, store.clone())?);
        let upstream = Upstream::new(&config.upstream)?;
        let parsed = ParseMemo::new(
            parse_bytes,
            config.cache.ignore_fields.clone(),
            config.admin.show_prompts,
        );
        let flights = Arc::new(Flights::new(recording_bounds(&config.cache)));
        let metrics = Metrics::new(
            cache.clone(),
            spend.clone(),
            team.clone(),
            team_cache.clone(),
        );
        Ok(Arc::new(App {
            parsed,
            store,
            config,
            upstream,
            flights,
            spend,
            fingerprints,
            held_key,
            prices: RwLock::new(None),
            exchanges: tokio_util::task::TaskTracker::new(),
            metrics,
            team_cache,
            team,
            recent: Recent::default(),
            cache,
            alerts,
        }))
    }

    /// Who a request is for (see `attribution::resolve`).
    pub fn attribute(
        &self,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<crate::attribution::Attribution, crate::error::ApiError> {
        let creds = crate::attribution::Credentials {
            tokens: &self.config.tokens,
            held_key: self.held_key.as_ref(),
            fingerprints: &self.fingerprints,
        };
        crate::attribution::resolve(&creds, path, headers)
    }

    pub fn prices(&self) -> Option<Arc<Prices>> {
        self.prices.read().ok().and_then(|p| p.clone())
    }

    pub fn set_prices(&self, prices: Prices) {
        if let Ok(mut p) = self.prices.write() {
            *p = Some(Arc::new(prices));
        }
    }

    /// Accounts for an answer nobody waits on the line of (hits, followers, upstream's
    /// errors): the ledger line is queued for the next group commit, into the `room` the
    /// request claimed if it did, and awaited only when the writer is behind.
    pub async fn account(&self, line: LedgerLine, prompt: Option<&str>, room: Option<Room>) {
        let line = Arc::new(line);
        self.note(&line, prompt);
        let spent = (line.cost_f64() > 0.0).then(|| line.project.clone());
        if let Some(done) = self.spend.record_nowait_in(line, room) {
            if let Err(e) = crate::spend::durable(done).await {
                tracing::error!(error = %e, "could not make the ledger line durable");
            }
        }
        if let Some(project) = spent {
            self.check_alerts(&project);
        }
    }

    /// Accounts for an answer upstream served: resolves once its ledger line is on disk.
    /// Its cost takes the place of what the request had reserved of its budget.
    pub async fn account_durably(
        &self,
        line: LedgerLine,
        prompt: Option<&str>,
        reservation: Option<Reservation>,
        room: Option<Room>,
    ) -> Result<(), SpendError> {
        let line = Arc::new(line);
        self.note(&line, prompt);
        let spent = (line.cost_f64() > 0.0).then(|| line.project.clone());
        let recorded = self.spend.record_reserved(line, reservation, room).await;
        if let Some(project) = spent {
            self.check_alerts(&project);
        }
        recorded
    }

    /// Queues the budget alerts `project`'s spend has earned and not yet had.
    pub fn check_alerts(&self, project: &str) {
        if let Some(used) = self.spend.period_use(project) {
            self.alerts.check(project, &used);
        }
    }

    fn note(&self, line: &Arc<LedgerLine>, prompt: Option<&str>) {
        self.metrics
            .spend(&line.project, line.cost_f64(), line.saved_f64());
        self.recent.push(line, prompt);
    }

    /// Makes everything written so far durable (on shutdown).
    pub async fn close(&self) {
        self.alerts.close().await;
        if let Some(team) = &self.team_cache {
            team.close().await;
        }
        self.spend.close().await;
        let cache = self.cache.clone();
        match tokio::task::spawn_blocking(move || cache.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not flush the cache"),
            Err(e) => tracing::error!(error = %e, "the task to flush the cache failed"),
        }
    }
}

/// The fingerprinter of credentials (the team's, with `team.secret_file`, so that cache
/// partitions mean the same on every daemon of the team; else the daemon's own) and the
/// team tier of the cache, with `team.redis`.
fn open_team(
    config: &Config,
    own: Fingerprinter,
) -> anyhow::Result<(Fingerprinter, Option<TeamTier>)> {
    let t = &config.team_cache;
    let secret = t.secret_file.as_deref().map(TeamSecret::load).transpose()?;
    let fingerprints = secret.as_ref().map_or(own, TeamSecret::fingerprinter);
    let Some(servers) = &t.redis else {
        return Ok((fingerprints, None));
    };
    if secret.is_none() && config.cache.scope == crate::config::Scope::Key {
        tracing::warn!("team.redis is set without team.secret_file: with cache.scope = \"key\", each daemon's partitions are its own and the team shares nothing");
    }
    // Without a team secret the seal only binds an entry to its key.
    let seal = secret.as_ref().map_or_else(
        || blake3::derive_key("chatcache team cache entry seal v1, no team secret", b""),
        TeamSecret::entry_key,
    );
    let team = TeamTier::open(servers, t, config.cache.max_age, seal)?;
    Ok((fingerprints, Some(team)))
}

/// An answer is recorded up to `cache.max_entry`; past it, it may run this far ahead of
/// the slowest client reading it.
fn recording_bounds(cache: &crate::config::CacheConfig) -> crate::cache::flight::Bounds {
    let max_entry = cache.max_entry;
    crate::cache::flight::Bounds {
        max_entry,
        window: max_entry.min(1 << 20),
    }
}

/// Earlier versions kept answers in files of their own under `answers/`; nothing reads
/// them any more. They are left alone, and named once.
fn warn_of_earlier_answer_files(data_dir: &Path) {
    let dir = data_dir.join("answers");
    if dir.is_dir() {
        tracing::warn!(dir = %dir.display(), "answer files of an earlier version are no longer read; the directory can be deleted");
    }
}

/// Creates the data dir (0700) and opens the store in it. A store that cannot be opened
/// because it is damaged is moved aside (and logged) and a new one started, so a damaged
/// file never keeps the daemon from starting; the ledger rebuilds the rollups.
pub fn open_data_dir(dir: &Path, memory: u64) -> anyhow::Result<(Store, Fingerprinter)> {
    create_private_dir(dir)?;
    let fingerprints = Fingerprinter::load_or_create(dir)?;
    let store_dir = dir.join("store");
    let store = match Store::open(&store_dir, memory) {
        Ok(s) => s,
        Err(e @ StoreError::Locked(_)) => return Err(anyhow::Error::new(e)),
        Err(e) => {
            let aside = damaged_name(&store_dir);
            tracing::error!(error = %e, moved_to = %aside.display(), "the cache store is damaged; moving it aside and starting an empty one");
            std::fs::rename(&store_dir, &aside)
                .with_context(|| format!("cannot move the damaged store to {}", aside.display()))?;
            Store::open(&store_dir, memory)
                .map_err(|e| anyhow::anyhow!("cannot open a new store: {e}"))?
        }
    };
    Ok((store, fingerprints))
}

fn damaged_name(store_dir: &Path) -> PathBuf {
    let stamp = crate::cache::now_ms();
    store_dir.with_file_name(format!("store.damaged-{stamp}"))
}

pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))
}

fn load_held_key(config: &Config) -> anyhow::Result<Option<HeaderValue>> {
    let u = &config.upstream;
    let key = if let Some(path) = &u.api_key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read upstream.api_key_file {}", path.display()))?;
        Some(text.trim().to_string())
    } else if let Some(var) = &u.api_key_env {
        let text = std::env::var(var)
            .with_context(|| format!("upstream.api_key_env: ${var} is not set"))?;
        Some(text.trim().to_string())
    } else {
        None
    };
    match key {
        None => Ok(None),
        Some(k) if k.is_empty() => anyhow::bail!("the upstream key is empty"),
        Some(k) => {
            let mut v = HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                anyhow::anyhow!("the upstream key has characters a header cannot carry")
            })?;
            v.set_sensitive(true);
            Ok(Some(v))
        }
    }
}
