//! Where a request goes: `/_chatcache/*` to the admin API, everything else to the proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::app::App;
use crate::body::Body;

/// Entry point for every request the server accepts.
pub async fn route(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if crate::admin::is_admin_path(req.uri().path()) {
        // Boxed, as the proxy's upstream path is: a hit's future stays small (it is moved
        // several times per request) and does not carry the state of paths it never takes.
        return Box::pin(crate::admin::route(app, req, peer)).await;
    }
    crate::proxy::handle(app, req).await
}
