//! Where a request goes: `/_chatcache/*` to the admin API, everything else to the proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::app::App;
use crate::body::Body;

/// Entry point for every request the server accepts.
pub async fn route(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    // Both boxed: hyper keeps room for this future for as long as the connection lives,
    // so every open connection (a thousand open streams: a thousand) would hold room for
    // the largest path's state. Boxed, that room is taken while a request is handled and
    // given back when its answer starts.
    if crate::admin::is_admin_path(req.uri().path()) {
        return Box::pin(crate::admin::route(app, req, peer)).await;
    }
    Box::pin(crate::proxy::handle(app, req)).await
}
