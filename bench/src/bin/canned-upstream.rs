//! A fast stand-in for a vendor: answers every request with the same Stripe-shaped
//! PaymentIntent JSON, on one thread, and counts requests (`GET /__count`).
//! Usage: canned-upstream PORT

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

const INTENT: &str = r#"{"id":"pi_3BenchCanned0000000000","object":"payment_intent","amount":1,"amount_received":1,"currency":"usd","status":"succeeded","livemode":false,"metadata":{}}"#;

async fn answer(count: Arc<AtomicU64>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/__count" {
        return Response::new(Full::new(Bytes::from(
            count.load(Ordering::Relaxed).to_string(),
        )));
    }
    count.fetch_add(1, Ordering::Relaxed);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // Echo the amount asked for, so the proxy settles what the call really cost.
    let amount = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "amount")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(1);
    let intent = INTENT.replace(
        "\"amount\":1,\"amount_received\":1",
        &format!("\"amount\":{amount},\"amount_received\":{amount}"),
    );
    let mut resp = Response::new(Full::new(Bytes::from(intent)));
    resp.headers_mut().insert(
        "content-type",
        "application/json"
            .parse()
            .unwrap_or(hyper::header::HeaderValue::from_static("application/json")),
    );
    resp.headers_mut().insert(
        "request-id",
        hyper::header::HeaderValue::from_static("req_bench"),
    );
    resp
}

fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "0".into())
        .parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let count = Arc::new(AtomicU64::new(0));
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let count = count.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let count = count.clone();
                    async move { Ok::<_, Infallible>(answer(count, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
