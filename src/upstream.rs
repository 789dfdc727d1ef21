//! The pooled client that reaches the upstream API: rustls (system roots plus an optional
//! private CA) or plain HTTP, connect and first-byte timeouts, no redirects followed, and
//! relaying of upstream bodies with a limit on the gap between pieces.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::body::Body;
use crate::config::UpstreamConfig;
use crate::error::ApiError;

/// Idle upstream connections kept for reuse; more are closed once idle.
const MAX_IDLE_PER_HOST: usize = 32;

pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: Uri,
    first_byte_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> anyhow::Result<Upstream> {
        let tls = tls_config(cfg)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Ok(Upstream {
            client,
            base: cfg.url.clone(),
            first_byte_timeout: cfg.first_byte_timeout,
            idle_timeout: cfg.idle_timeout,
        })
    }

    /// The upstream URI for a client's path and query (after any `/p/NAME` prefix is gone):
    /// always the configured scheme and authority, whatever the client said.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, ApiError> {
        let base_path = self.base.path().trim_end_matches('/');
        let pq = format!("{base_path}{path_and_query}");
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(
            pq.parse()
                .map_err(|_| ApiError::BadRequest("the request path is not valid".into()))?,
        );
        Uri::from_parts(parts)
            .map_err(|_| ApiError::BadRequest("the request path is not valid".into()))
    }

    /// Sends the request; waits at most the first-byte timeout for the response head.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, ApiError> {
        match tokio::time::timeout(self.first_byte_timeout, self.client.request(req)).await {
            Err(_) => Err(ApiError::UpstreamTimeout(self.first_byte_timeout)),
            Ok(Ok(resp)) if ambiguous_framing(resp.headers()) => {
                // Dropped unread, so the connection is not reused.
                Err(ApiError::UpstreamBroken(
                    "upstream framed its answer ambiguously (Content-Length with Transfer-Encoding, or two lengths)".into(),
                ))
            }
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }

    /// A client body that relays an upstream body piece by piece, failing (so the client
    /// sees a broken transfer, not a short answer) on an upstream error or a stall.
    pub fn relay(&self, body: Incoming) -> Body {
        let idle = self.idle_timeout;
        let frames = futures_util::stream::unfold(Some(body), move |state| async move {
            let mut body = state?;
            match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => Some((Ok(frame), Some(body))),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((Err(e.into()), None)),
                Err(_) => Some((Err(ApiError::UpstreamTimeout(idle).into()), None)),
            }
        });
        http_body_util::StreamBody::new(frames).boxed()
    }
}

/// A response whose length two parsers could read differently (RFC 9112 6.3): the classic
/// way to desynchronise a proxy from its upstream.
fn ambiguous_framing(headers: &http::HeaderMap) -> bool {
    let lengths = headers.get_all(http::header::CONTENT_LENGTH).iter().count();
    lengths > 1 || (lengths == 1 && headers.contains_key(http::header::TRANSFER_ENCODING))
}

fn classify(e: &hyper_util::client::legacy::Error) -> ApiError {
    use std::error::Error as _;
    let mut detail = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    if e.is_connect() {
        ApiError::UpstreamUnreachable(detail)
    } else {
        ApiError::UpstreamBroken(detail)
    }
}

pub(crate) fn tls_config(cfg: &UpstreamConfig) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "could not load some system CA certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = &cfg.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| anyhow::anyhow!("upstream.ca_file {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("upstream.ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("upstream.ca_file {} holds no certificate", path.display());
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| anyhow::anyhow!("upstream.ca_file {}: {e}", path.display()))?;
        }
    } else if added == 0 && cfg.url.scheme_str() == Some("https") {
        tracing::warn!("no system CA certificates found; HTTPS upstreams will fail verification");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn upstream(url: &str) -> Upstream {
        let ov = Overrides {
            upstream: Some(url.into()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        let c = Config::from_parts(None, None, ov, |_| None).unwrap();
        Upstream::new(&c.upstream).unwrap()
    }

    #[test]
    fn uri_keeps_configured_authority_and_base_path() {
        let u = upstream("https://api.example:8443/v1/");
        assert_eq!(
            u.uri_for("/chat/completions?x=1").unwrap().to_string(),
            "https://api.example:8443/v1/chat/completions?x=1"
        );
        let u = upstream("http://127.0.0.1:9");
        assert_eq!(
            u.uri_for("/models").unwrap().to_string(),
            "http://127.0.0.1:9/models"
        );
    }
}
