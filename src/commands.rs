//! Running the commands other than `serve`: each becomes an admin API request, sent to
//! the running daemon, or served in-process from the data dir when no daemon holds it.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::app::App;
use crate::cli::{ByArg, CacheCommand, FormatArg, SpendArgs, StatsArgs};
use crate::config::Config;
use crate::spend::Report;
use crate::store::StoreError;

/// Where admin requests go.
pub enum Admin {
    Remote { base: String, token: Option<String> },
    Local(Arc<App>),
}

impl Admin {
    /// The daemon if it holds the data dir, else the data dir itself.
    pub async fn connect(config: &Config) -> anyhow::Result<Admin> {
        match App::open(config.clone()) {
            Ok(app) => Ok(Admin::Local(app)),
            Err(e) if matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Locked(_))) => {
                let addr = loopback_of(config.listen);
                Ok(Admin::Remote {
                    base: format!("http://{addr}"),
                    token: config.admin.token.clone(),
                })
            }
            Err(e) => Err(e),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path_q: &str,
        body: Bytes,
        headers: HeaderMap,
    ) -> anyhow::Result<Bytes> {
        let mut out = Vec::new();
        self.download(method, path_q, body, headers, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(out.into())
    }

    /// Sends the request and hands the answer to `sink` piece by piece as it arrives (it is
    /// never held whole). Fails with the daemon's message on an answer other than 200, and
    /// when the answer breaks off.
    pub async fn download(
        &self,
        method: Method,
        path_q: &str,
        body: Bytes,
        headers: HeaderMap,
        mut sink: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let (status, mut answer) = match self {
            Admin::Local(app) => {
                let mut req = Request::new(body);
                *req.method_mut() = method;
                *req.uri_mut() = format!("{}{path_q}", crate::admin::PREFIX).parse()?;
                *req.headers_mut() = headers;
                let resp = crate::admin::dispatch(app.clone(), req).await;
                (resp.status(), resp.into_body())
            }
            Admin::Remote { base, token } => {
                let client: Client<_, Full<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                let mut req = Request::new(Full::new(body));
                *req.method_mut() = method;
                *req.uri_mut() = format!("{base}{}{path_q}", crate::admin::PREFIX).parse()?;
                *req.headers_mut() = headers;
                if let Some(t) = token {
                    let mut v = HeaderValue::from_str(&format!("Bearer {t}"))?;
                    v.set_sensitive(true);
                    req.headers_mut().insert(http::header::AUTHORIZATION, v);
                }
                let resp = client
                    .request(req)
                    .await
                    .with_context(|| format!("the data dir is held by a running daemon, but it does not answer at {base}"))?;
                (resp.status(), resp.into_body().map_err(Into::into).boxed())
            }
        };
        if status != StatusCode::OK {
            let bytes = answer
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .to_bytes();
            let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{msg} ({status})");
        }
        while let Some(frame) = answer.frame().await {
            let frame = frame.map_err(|e| anyhow::anyhow!("the answer broke off: {e}"))?;
            if let Ok(data) = frame.into_data() {
                sink(&data)?;
            }
        }
        Ok(())
    }

    pub async fn close(self) {
        if let Admin::Local(app) = self {
            app.close().await;
        }
    }
}

fn loopback_of(listen: SocketAddr) -> SocketAddr {
    let mut a = listen;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    a
}

pub async fn spend(config: &Config, args: SpendArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(config).await?;
    if args.rebuild {
        admin
            .call(
                Method::POST,
                "/spend/rebuild",
                Bytes::new(),
                HeaderMap::new(),
            )
            .await?;
    }
    let mut q = form_urlencoded::Serializer::new(String::new());
    let by = if args.by.is_empty() {
        vec![ByArg::Project]
    } else {
        args.by
    };
    for b in by {
        q.append_pair(
            "by",
            match b {
                ByArg::Project => "project",
                ByArg::Model => "model",
                ByArg::Day => "day",
                ByArg::Key => "key",
            },
        );
    }
    for (name, v) in [
        ("since", &args.since),
        ("until", &args.until),
        ("project", &args.project),
    ] {
        if let Some(v) = v {
            q.append_pair(name, v);
        }
    }
    let bytes = admin
        .call(
            Method::GET,
            &format!("/spend?{}", q.finish()),
            Bytes::new(),
            HeaderMap::new(),
        )
        .await;
    admin.close().await;
    let report: Report = serde_json::from_slice(&bytes?)?;
    let text = match args.format {
        FormatArg::Json => crate::spend::render_json(&report),
        FormatArg::Csv => crate::spend::render_csv(&report),
        FormatArg::Table => crate::spend::render_table(&report),
    };
    print!("{text}");
    Ok(())
}

/// How often `stats --watch` refreshes.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn stats(config: &Config, args: StatsArgs) -> anyhow::Result<()> {
    if !args.watch {
        print!(
            "{}",
            crate::admin::dashboard::stats::render(&snapshot(config).await?)
        );
        return Ok(());
    }
    let mut out = std::io::stdout();
    loop {
        // Connect anew each time: a daemon may have started or stopped meanwhile, and an
        // in-process open must not keep the data dir from a daemon that wants to start.
        let text = match snapshot(config).await {
            Ok(s) => crate::admin::dashboard::stats::render(&s),
            Err(e) => format!(
                "chatcache: {e:#}\n(retrying every {}s)\n",
                WATCH_EVERY.as_secs()
            ),
        };
        // Clear the screen and home the cursor, then draw.
        write!(out, "\x1b[2J\x1b[H{text}")?;
        out.flush()?;
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn snapshot(config: &Config) -> anyhow::Result<crate::admin::dashboard::stats::Snapshot> {
    let admin = Admin::connect(config).await?;
    let result = snapshot_with(&admin, config).await;
    admin.close().await;
    result
}

async fn snapshot_with(
    admin: &Admin,
    config: &Config,
) -> anyhow::Result<crate::admin::dashboard::stats::Snapshot> {
    use crate::admin::dashboard::stats::{CacheLine, Snapshot};
    let now = time::OffsetDateTime::now_utc();
    let day = |d: time::Date| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day());
    let today = now.date();
    let first = today.replace_day(1)?;
    let get = |path: String| async move {
        admin
            .call(Method::GET, &path, Bytes::new(), HeaderMap::new())
            .await
    };
    let today_report: Report = serde_json::from_slice(
        &get(format!(
            "/spend?by=project&since={}&until={}",
            day(today),
            day(today)
        ))
        .await?,
    )?;
    let month_report: Report = serde_json::from_slice(
        &get(format!(
            "/spend?by=project&since={}&until={}",
            day(first),
            day(today)
        ))
        .await?,
    )?;
    let budgets = serde_json::from_slice(&get("/budgets".to_string()).await?)?;
    let cache =
        serde_json::from_slice::<serde_json::Value>(&get("/cache/stats".to_string()).await?)
            .ok()
            .map(|v| CacheLine {
                entries: v["entries"].as_u64().unwrap_or(0),
                bytes: v["bytes"].as_u64().unwrap_or(0),
                max_bytes: v["max_bytes"].as_u64().unwrap_or(0),
            });
    let source = match admin {
        Admin::Remote { base, .. } => format!("daemon at {base}"),
        Admin::Local(_) => format!("data dir {}", config.data_dir.display()),
    };
    Ok(Snapshot {
        now,
        source,
        today: today_report,
        month: month_report,
        budgets,
        cache,
    })
}

pub async fn cache(config: &Config, cmd: CacheCommand) -> anyhow::Result<()> {
    let admin = Admin::connect(config).await?;
    let result = cache_with(&admin, cmd).await;
    admin.close().await;
    result
}

async fn cache_with(admin: &Admin, cmd: CacheCommand) -> anyhow::Result<()> {
    let none = HeaderMap::new;
    match cmd {
        CacheCommand::Stats => {
            let b = admin
                .call(Method::GET, "/cache/stats", Bytes::new(), none())
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&b)?;
            if let Some(obj) = v.as_object() {
                for (k, v) in obj {
                    println!("{k:<16} {v}");
                }
            }
        }
        CacheCommand::List { limit } => {
            let b = admin
                .call(
                    Method::GET,
                    &format!("/cache/list?limit={limit}"),
                    Bytes::new(),
                    none(),
                )
                .await?;
            let rows: Vec<serde_json::Value> = serde_json::from_slice(&b)?;
            println!(
                "{:<64}  {:<6} {:<18} {:<22} {:>9}  CREATED",
                "KEY", "STREAM", "PATH", "MODEL", "BYTES"
            );
            for r in rows {
                let created = r["created_ms"].as_u64().map(format_ms).unwrap_or_default();
                println!(
                    "{:<64}  {:<6} {:<18} {:<22} {:>9}  {}",
                    r["key"].as_str().unwrap_or(""),
                    r["stream"].as_bool().unwrap_or(false),
                    // Both come from requests: no terminal control characters.
                    crate::spend::printable(r["path"].as_str().unwrap_or("")),
                    crate::spend::printable(r["model"].as_str().unwrap_or("-")),
                    r["bytes"].as_u64().unwrap_or(0),
                    created
                );
            }
        }
        CacheCommand::Show { key } => {
            let b = admin
                .call(
                    Method::GET,
                    &format!("/cache/entries/{key}"),
                    Bytes::new(),
                    none(),
                )
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&b)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        CacheCommand::Purge {
            older_than,
            model,
            all,
        } => {
            if older_than.is_none() && model.is_none() && !all {
                bail!("say what to purge: --older-than DUR, --model M or --all");
            }
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(d) = &older_than {
                q.append_pair("older_than", d);
            }
            if let Some(m) = &model {
                q.append_pair("model", m);
            }
            if all {
                q.append_pair("all", "true");
            }
            let b = admin
                .call(
                    Method::POST,
                    &format!("/cache/purge?{}", q.finish()),
                    Bytes::new(),
                    none(),
                )
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&b)?;
            println!("removed {} entries", v["removed"]);
        }
        CacheCommand::Export { file } => {
            // Written beside its destination and moved there only once whole, so a failed
            // export never leaves a short bundle that looks complete.
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            let mut partial = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?;
            let bar = progress(Progress::Entries, "exporting");
            let mut entries = 0u64;
            {
                let mut out = std::io::BufWriter::new(partial.as_file_mut());
                admin
                    .download(
                        Method::GET,
                        "/cache/export",
                        Bytes::new(),
                        none(),
                        |chunk| {
                            out.write_all(chunk)?;
                            let lines = chunk.iter().filter(|c| **c == b'\n').count() as u64;
                            entries += lines;
                            bar.inc(lines);
                            Ok(())
                        },
                    )
                    .await?;
                out.flush()?;
            }
            partial.as_file().sync_all()?;
            partial
                .persist(&file)
                .with_context(|| format!("cannot create {}", file.display()))?;
            bar.finish_and_clear();
            println!("exported {entries} entries to {}", file.display());
        }
        CacheCommand::Explain {
            file,
            path,
            project,
            namespace,
            key_env,
        } => {
            let body = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?
            };
            let headers = partition_headers(project, namespace, &key_env)?;
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("path", &path);
            let b = admin
                .call(
                    Method::POST,
                    &format!("/cache/explain?{}", q.finish()),
                    Bytes::from(body),
                    headers,
                )
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&b)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        CacheCommand::Import {
            file,
            project,
            namespace,
            key_env,
        } => {
            let opened = std::fs::File::open(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let size = opened.metadata().map(|m| m.len()).unwrap_or(0);
            let mut input = std::io::BufReader::new(opened);
            let headers = partition_headers(project, namespace, &key_env)?;
            let bar = progress(Progress::Bytes(size), "importing");
            let mut imported = 0u64;
            let mut batch = Vec::new();
            loop {
                // Up to IMPORT_BATCH lines per request; the file is never read whole.
                let mut lines = 0;
                while lines < IMPORT_BATCH {
                    let read = std::io::BufRead::read_until(&mut input, b'\n', &mut batch)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    if read == 0 {
                        break;
                    }
                    lines += 1;
                }
                if batch.is_empty() {
                    break;
                }
                let sent = batch.len() as u64;
                let body = Bytes::from(std::mem::take(&mut batch));
                let b = admin
                    .call(Method::POST, "/cache/import", body, headers.clone())
                    .await?;
                let v: serde_json::Value = serde_json::from_slice(&b)?;
                imported += v["entries"].as_u64().unwrap_or(0);
                bar.inc(sent);
            }
            bar.finish_and_clear();
            println!("imported {imported} entries from {}", file.display());
        }
    }
    Ok(())
}

/// The headers that name a cache partition to the admin API: project, namespace, and the
/// credential from the environment variable `key_env` (sent as `x-chatcache-credential`).
fn partition_headers(
    project: Option<String>,
    namespace: Option<String>,
    key_env: &str,
) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    if let Some(p) = project {
        headers.insert("x-chatcache-project", HeaderValue::from_str(&p)?);
    }
    if let Some(n) = namespace {
        headers.insert("x-chatcache-namespace", HeaderValue::from_str(&n)?);
    }
    if let Ok(key) = std::env::var(key_env) {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", key.trim()))?;
        v.set_sensitive(true);
        headers.insert("x-chatcache-credential", v);
    }
    Ok(headers)
}

/// Lines of a bundle sent per import request.
const IMPORT_BATCH: usize = 500;

/// What a progress bar counts.
enum Progress {
    /// Entries, with no known total.
    Entries,
    /// Bytes of a file of this size.
    Bytes(u64),
}

/// A progress bar on a terminal; hidden otherwise.
fn progress(counts: Progress, what: &'static str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let (bar, template) = match counts {
        Progress::Entries => (
            indicatif::ProgressBar::new_spinner(),
            "{msg} {spinner} {pos} entries",
        ),
        Progress::Bytes(size) => (
            indicatif::ProgressBar::new(size),
            "{msg} {bar:40} {bytes}/{total_bytes}",
        ),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

fn format_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub fn token_new(project: &str) -> anyhow::Result<()> {
    crate::config::check_project_name(project).map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = crate::secret::new_token()?;
    println!("token (give it to the client; it is shown only now):\n  {token}\n");
    println!("add to the config file (only the hash is kept):\n");
    println!(
        "[[tokens]]\nproject = \"{project}\"\nhash = \"blake3:{}\"",
        crate::secret::token_hash(&token)
    );
    Ok(())
}
