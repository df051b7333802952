//! The pooled keep-alive client to the vendors: HTTPS with rustls and the webpki roots for the
//! real APIs; plain HTTP allowed for local stand-ins named in a policy's `upstream`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// The upstream client.
pub type Upstream = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client with a generous idle pool (many concurrent callers share few vendors).
pub fn client() -> Upstream {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(512)
        .build(https)
}
