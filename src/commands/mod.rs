//! Running the commands other than `serve`: each becomes an admin API request, sent to
//! the running daemon, or served in-process from the data dir when no daemon holds it
//! (`Admin`). The commands themselves are in a file per group below.

mod cache;
mod spend;
mod stats;

pub use cache::cache;
pub use spend::spend;
pub use stats::stats;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::app::App;
use crate::config::Config;
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
