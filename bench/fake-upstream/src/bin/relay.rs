//! The floor under any proxy built on chatcache's libraries: a reverse proxy made of hyper's
//! HTTP/1 server, hyper-util's pooled client and tokio's multi-threaded runtime, and nothing
//! else. It reads the request body whole (as chatcache must, to key it), sends the request
//! on to the upstream, and relays the answer piece by piece. No parsing, keying, cache,
//! ledger, metrics or logs: the benchmark runs it beside chatcache and nginx to tell the cost
//! of the libraries from the cost of chatcache's own work.
//!
//! Usage: bench-relay --listen 127.0.0.1:PORT --upstream http://127.0.0.1:PORT

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use chatcache_bench_tools::accept;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Upstream = Client<HttpConnector, Full<Bytes>>;
type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn bad_gateway(e: impl std::fmt::Display) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("relay: {e}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

/// `base` is the upstream's scheme and authority (and any base path), without a final `/`.
async fn relay(client: Upstream, base: Arc<str>, req: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad_gateway(e),
    };
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("{base}{pq}").parse::<Uri>() {
        Ok(u) => u,
        Err(e) => return bad_gateway(e),
    };
    parts.headers.remove(hyper::header::HOST);
    match client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(resp) => resp.map(|b| b.map_err(Into::into).boxed()),
        Err(e) => bad_gateway(e),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = arg(&args, "--listen")
        .expect("--listen ADDR")
        .parse()
        .expect("--listen ADDR");
    let base: Uri = arg(&args, "--upstream")
        .expect("--upstream URL")
        .parse()
        .expect("--upstream URL");
    let base: Arc<str> = base.to_string().trim_end_matches('/').into();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Upstream = Client::builder(TokioExecutor::new()).build(connector);
        let listener = TcpListener::bind(listen).await.expect("bind");
        eprintln!("bench-relay listening on http://{listen}, relaying to {base}");
        loop {
            let sock = accept(&listener).await;
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (client, base) = (client.clone(), base.clone());
                    async move { Ok::<_, Infallible>(relay(client, base, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
}
