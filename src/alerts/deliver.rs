//! Delivering one alert: a POST of its JSON to the webhook (hyper-util's client, as
//! upstream is reached) and/or the command run with the JSON on stdin, each retried with
//! exponential backoff (backon) until it succeeds, the retries run out, or the daemon
//! stops.

use std::process::Stdio;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::config::{AlertsConfig, UpstreamConfig};

/// One attempt may take this long (connect, send, answer; or the command's run).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries wait at most this long between attempts.
const MAX_DELAY: Duration = Duration::from_secs(300);

pub struct Deliverer {
    webhook: Option<Uri>,
    command: Option<String>,
    backoff: ExponentialBuilder,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Deliverer {
    pub fn new(cfg: &AlertsConfig, upstream: &UpstreamConfig) -> anyhow::Result<Deliverer> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(ATTEMPT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::upstream::tls_config(upstream)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Deliverer {
            webhook: cfg.webhook.clone(),
            command: cfg.command.clone(),
            backoff: ExponentialBuilder::default()
                .with_min_delay(cfg.retry_delay)
                .with_max_delay(MAX_DELAY)
                .with_max_times(cfg.retries as usize),
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// Delivers `json` to every configured destination at once, each on its own (one
    /// that is down does not hold up the other). Err names what failed.
    pub async fn deliver(&self, json: Bytes, stop: &CancellationToken) -> Result<(), String> {
        let webhook = async {
            match &self.webhook {
                Some(uri) => {
                    let post = || self.post(uri, json.clone());
                    self.retried(post, stop, "webhook").await
                }
                None => Ok(()),
            }
        };
        let command = async {
            match &self.command {
                Some(cmd) => {
                    let run = || run_command(cmd, json.clone());
                    self.retried(run, stop, "command").await
                }
                None => Ok(()),
            }
        };
        match tokio::join!(webhook, command) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) => Err(format!("webhook: {e}")),
            (Ok(()), Err(e)) => Err(format!("command: {e}")),
            (Err(w), Err(c)) => Err(format!("webhook: {w}; command: {c}")),
        }
    }

    /// `attempt`, retried with backoff; a stopping daemon cuts the wait short and tries no
    /// more.
    async fn retried<F, Fut>(
        &self,
        attempt: F,
        stop: &CancellationToken,
        what: &'static str,
    ) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let sleep_stop = stop.clone();
        let when_stop = stop.clone();
        attempt
            .retry(self.backoff)
            .sleep(move |d| {
                let stop = sleep_stop.clone();
                async move {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stop.cancelled() => {}
                    }
                }
            })
            .when(move |_| !when_stop.is_cancelled())
            .notify(|e, after| {
                tracing::warn!(error = %e, retry_in = ?after, "budget alert {what} failed; retrying")
            })
            .await
    }

    async fn post(&self, uri: &Uri, json: Bytes) -> Result<(), String> {
        let mut req = Request::new(Full::new(json));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.client.request(req)).await {
            Err(_) => Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!("the webhook answered {}", resp.status())),
        }
    }
}

/// Runs `cmd` with `/bin/sh -c`, the alert's JSON on its stdin; Ok if it exits 0.
async fn run_command(cmd: &str, json: Bytes) -> Result<(), String> {
    let run = async {
        let mut child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run the command: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its input is not an error.
            let _ = stdin.write_all(&json).await;
        }
        let status = child.wait().await.map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("the command exited with {status}"))
        }
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, run)
        .await
        .map_err(|_| format!("the command ran longer than {ATTEMPT_TIMEOUT:?}"))?
}
