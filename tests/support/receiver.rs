//! A webhook receiver on 127.0.0.1 for budget alerts: it keeps the JSON of every POST it
//! accepts, in order, and can refuse the first attempts (503) or hold every answer until
//! the test lets it go.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch, Mutex};

struct Shared {
    accepted: mpsc::UnboundedSender<serde_json::Value>,
    arrived: mpsc::UnboundedSender<()>,
    attempts: AtomicUsize,
    refuse_first: AtomicUsize,
    /// While false, answers wait.
    open: watch::Receiver<bool>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accepted: Mutex<mpsc::UnboundedReceiver<serde_json::Value>>,
    arrived: Mutex<mpsc::UnboundedReceiver<()>>,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Accepts every POST at once.
    pub async fn start() -> Receiver {
        Receiver::launch(0, true).await
    }

    /// Answers the first `n` attempts 503.
    pub async fn refusing_first(n: usize) -> Receiver {
        Receiver::launch(n, true).await
    }

    /// Holds every answer until `release`.
    pub async fn holding() -> Receiver {
        Receiver::launch(0, false).await
    }

    async fn launch(refuse_first: usize, open: bool) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, accepted) = mpsc::unbounded_channel();
        let (arrived_tx, arrived) = mpsc::unbounded_channel();
        let (open_tx, open_rx) = watch::channel(open);
        let shared = Arc::new(Shared {
            accepted: accepted_tx,
            arrived: arrived_tx,
            attempts: AtomicUsize::new(0),
            refuse_first: AtomicUsize::new(refuse_first),
            open: open_rx,
        });
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let sh = sh.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(sh.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            shared,
            accepted: Mutex::new(accepted),
            arrived: Mutex::new(arrived),
            open: open_tx,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The next alert accepted (waits up to 10 s).
    pub async fn next(&self) -> serde_json::Value {
        let mut rx = self.accepted.lock().await;
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an alert arrived in time")
            .expect("the receiver runs")
    }

    /// Waits until an attempt has arrived (and, when holding, is being held).
    pub async fn arrived(&self) {
        let mut rx = self.arrived.lock().await;
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an attempt arrived in time")
            .expect("the receiver runs");
    }

    /// Lets held answers (and every later one) go.
    pub fn release(&self) {
        let _ = self.open.send(true);
    }

    /// Attempts received so far, refused ones included.
    pub fn attempts(&self) -> usize {
        self.shared.attempts.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    sh: Arc<Shared>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, hyper::Error> {
    let body = req.into_body().collect().await?.to_bytes();
    sh.attempts.fetch_add(1, Ordering::SeqCst);
    let _ = sh.arrived.send(());
    let mut open = sh.open.clone();
    let _ = open.wait_for(|o| *o).await;
    let refuse = sh
        .refuse_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if refuse {
        503
    } else {
        let v = serde_json::from_slice(&body).expect("an alert is JSON");
        let _ = sh.accepted.send(v);
        200
    };
    let mut resp = http::Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    Ok(resp)
}
