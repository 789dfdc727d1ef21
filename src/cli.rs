//! The command line: what `chatcache` accepts, and the flags that override config.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "chatcache",
    version,
    about = "Local caching proxy and spend ledger for a chat API",
    after_help = "Audit:\n  chatcache cache explain FILE   why a request is a hit or a miss\n  chatcache spend reconcile      the ledger against the provider's /credits, drift flagged\n  [alerts] in the config         budget alerts to a webhook or command at 50/80/100 %"
)]
pub struct Cli {
    /// Config file (default: $XDG_CONFIG_HOME/chatcache/chatcache.toml, then /etc/chatcache/chatcache.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8484).
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Where the cache and the ledger live (default $XDG_DATA_HOME/chatcache).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Upstream API base URL (default https://chatapi.ai-now.space).
    #[arg(long, global = true, value_name = "URL")]
    pub upstream: Option<String>,
    /// record | replay | refresh | passthrough.
    #[arg(long, global = true, value_name = "MODE")]
    pub mode: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            data_dir: self.data_dir.clone(),
            mode: self.mode.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy daemon.
    Serve,
    /// Report what was spent and saved; `spend reconcile` checks the ledger against the
    /// provider's credits.
    Spend(SpendArgs),
    /// A one-screen summary: hit rate, spend and savings, top projects, budgets.
    Stats(StatsArgs),
    /// Inspect and manage the answer cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Local client tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ByArg {
    Project,
    Model,
    Day,
    Key,
    /// The daemon a line came from (with --team).
    Daemon,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SpendArgs {
    #[command(subcommand)]
    pub command: Option<SpendCommand>,
    /// Group by (repeatable; default: project).
    #[arg(long, value_enum)]
    pub by: Vec<ByArg>,
    /// First day included (YYYY-MM-DD, UTC).
    #[arg(long)]
    pub since: Option<String>,
    /// Last day included (YYYY-MM-DD, UTC).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Every daemon of the team, from the team ledger on PostgreSQL.
    #[arg(long)]
    pub team: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: FormatArg,
    /// Rebuild the rollups from the ledger files first.
    #[arg(long)]
    pub rebuild: bool,
}

#[derive(Debug, Subcommand)]
pub enum SpendCommand {
    /// The ledger against the provider's credits: for each interval between two
    /// observations of /credits, the credit drop beside the upstream cost recorded, and
    /// the drift; intervals over spend.drift_warn are flagged.
    Reconcile(ReconcileArgs),
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only observations from this day (YYYY-MM-DD, UTC) or time (RFC 3339) on.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: FormatArg,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Refresh every 2 seconds until interrupted.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Entry count, sizes, evictions.
    Stats,
    /// The most recently used entries.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One entry: its request and answer.
    Show { key: String },
    /// Remove entries.
    Purge {
        /// Entries older than this (e.g. 7d, 12h).
        #[arg(long)]
        older_than: Option<String>,
        /// Entries for this model.
        #[arg(long)]
        model: Option<String>,
        /// Everything.
        #[arg(long)]
        all: bool,
    },
    /// Write every entry to a JSON Lines bundle (no credentials in it).
    Export { file: PathBuf },
    /// Say why a request (its body in FILE, or - for stdin) would be a hit or a miss.
    Explain {
        /// The request body, or - to read it from stdin.
        file: PathBuf,
        /// The API path it is sent to.
        #[arg(long, default_value = "/chat/completions")]
        path: String,
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        /// Environment variable holding the API key (or local token) that would send it.
        #[arg(long, default_value = "OPENAI_API_KEY")]
        key_env: String,
    },
    /// Load a bundle, re-keyed into the partition of the given credential/project.
    Import {
        file: PathBuf,
        /// Project whose partition to fill (with cache.scope = "project").
        #[arg(long)]
        project: Option<String>,
        /// Cache namespace to fill.
        #[arg(long)]
        namespace: Option<String>,
        /// Environment variable holding the API key (or local token) whose partition to fill.
        #[arg(long, default_value = "OPENAI_API_KEY")]
        key_env: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a local client token for a project and print its config line.
    New {
        #[arg(long)]
        project: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print where it came from.
    Check,
}
