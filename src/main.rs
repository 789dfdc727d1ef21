//! The `chatcache` binary: parse the command line, load config, run the command.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use chatcache::app::App;
use chatcache::cli::{Cli, Command, ConfigCommand, TokenCommand};
use chatcache::commands;
use chatcache::config::{Config, Overrides};

/// Exit status for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Threads for blocking store calls.
const MAX_BLOCKING_THREADS: usize = 8;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = |k: &str| std::env::var(k).ok();
    let overrides = cli.overrides().over(Overrides::from_env(env));
    let config = match Config::load(overrides, env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chatcache: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    chatcache::telemetry::init(config.log_format);
    // Store calls are short; a few blocking threads serve them all. An unbounded pool grows
    // to hundreds of threads (and malloc arenas) when many answers finish at once.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatcache: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatcache: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(config).await,
        Command::Spend(args) => commands::spend(&config, args).await,
        Command::Stats(args) => commands::stats(&config, args).await,
        Command::Cache(cmd) => commands::cache(&config, cmd).await,
        Command::Token(TokenCommand::New { project }) => commands::token_new(&project),
        Command::Config(ConfigCommand::Check) => {
            match &config.source {
                Some(p) => println!("ok: {}", p.display()),
                None => println!("ok: no config file found; built-in defaults"),
            }
            println!(
                "listen   {}\nupstream {}\nmode     {}\ndata_dir {}",
                config.listen,
                config.upstream.url,
                config.mode.as_str(),
                config.data_dir.display()
            );
            if let Some(url) = &config.team.postgres {
                // Shown redacted: the password never reaches the terminal.
                println!("team     {url} as {:?}", config.team.name);
            }
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let upstream = config.upstream.url.to_string();
    let mode = config.mode.as_str();
    let data_dir = config.data_dir.display().to_string();
    let app = App::open(config)?;
    let signals = chatcache::shutdown_signal().context("cannot install signal handlers")?;
    let shutdown = async {
        signals.await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    };
    tracing::info!(%upstream, mode, %data_dir, "listening on http://{addr}");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    // On a worker thread rather than this one: connections accepted there start on the
    // same worker, with no wake-up of another thread per connection.
    tokio::spawn(chatcache::run(app, listener, shutdown))
        .await
        .context("the server task failed")?;
    tracing::info!("stopped; everything recorded is on disk");
    Ok(())
}
