//! A streamed answer read as it arrives, so that a test can check what a client has
//! received at a given point (while upstream still holds the rest), then read it to its end.
#![allow(dead_code)]

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::client::try_open;

/// How long a test waits for an answer, or for bytes of it, before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

pub struct Streamed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Every byte received so far.
    pub got: Vec<u8>,
    body: Incoming,
}

impl Streamed {
    /// Posts `body` to `url` and returns once the answer's head has arrived.
    pub async fn open(url: &str, body: &str, headers: &[(&str, &str)]) -> Streamed {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        let sent = try_open(Method::POST, url, &h, body.to_string());
        let resp = tokio::time::timeout(DEADLINE, sent)
            .await
            .unwrap_or_else(|_| panic!("no answer from {url} within {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("request to {url} failed: {e:?}"));
        let (parts, body) = resp.into_parts();
        Streamed {
            status: parts.status,
            headers: parts.headers,
            got: Vec::new(),
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Reads until `enough` holds of what has arrived; fails the test if the body ends or
    /// breaks first, or nothing more comes in time.
    pub async fn until(&mut self, what: &str, enough: impl Fn(&[u8]) -> bool) {
        while !enough(&self.got) {
            let next = tokio::time::timeout(DEADLINE, self.body.frame()).await;
            match next {
                Err(_) => panic!("{what}: nothing more in {DEADLINE:?}; had {}", self.text()),
                Ok(None) => panic!("{what}: the answer ended first; had {}", self.text()),
                Ok(Some(Err(e))) => panic!("{what}: the answer broke ({e}); had {}", self.text()),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.got.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Reads to the end within `within`; Err if the answer broke off (a failed transfer)
    /// or did not end in time.
    pub async fn rest(&mut self, within: Duration) -> Result<(), String> {
        let read = async {
            while let Some(frame) = self.body.frame().await {
                let frame = frame.map_err(|e| format!("the answer broke: {e}"))?;
                if let Ok(data) = frame.into_data() {
                    self.got.extend_from_slice(&data);
                }
            }
            Ok(())
        };
        tokio::time::timeout(within, read)
            .await
            .unwrap_or_else(|_| Err(format!("the answer did not end within {within:?}")))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.got).into_owned()
    }
}
