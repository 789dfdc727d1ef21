//! `chatcache cache …`: stats, listing, showing, purging, export, import and explain of
//! the answer cache.

use std::io::{IsTerminal, Write};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use super::Admin;
use crate::cli::CacheCommand;
use crate::config::Config;

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
                let created = r["created_ms"]
                    .as_i64()
                    .map(crate::spend::rfc3339)
                    .unwrap_or_default();
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
