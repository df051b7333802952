//! A load generator in the manner of wrk2: keep-alive HTTP/1.1 connections, either closed-loop
//! (saturation: each connection sends its next request as soon as the last answer is read) or
//! open-loop at a fixed rate, where each request has an intended send time and its latency is
//! measured from that time, not from when it was actually sent. A server that stalls therefore
//! shows the stall in every request that should have gone out meanwhile (no coordinated
//! omission). It runs on one thread of its own, so every target gets the same client budget.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// One request, sent again and again.
#[derive(Debug, Clone)]
pub struct Shot {
    /// `127.0.0.1:PORT`.
    pub addr: std::net::SocketAddr,
    /// Path.
    pub path: String,
    /// Headers besides Host and Content-Length.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

/// How to load.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// As fast as the target answers.
    Saturate,
    /// This many requests per second in total, latency from the intended send time.
    Rate(u64),
}

/// What a run saw.
pub struct Outcome {
    /// Latency in microseconds, from the intended send time (CO-corrected).
    pub latency: Histogram<u64>,
    /// Service time in microseconds, from the actual send (what a closed-loop tool reports).
    pub service: Histogram<u64>,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Other answers (and connection errors).
    pub errors: u64,
    /// Status codes other than 2xx, with counts.
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Outcome {
    fn empty() -> Result<Outcome> {
        Ok(Outcome {
            latency: histogram()?,
            service: histogram()?,
            ok: 0,
            errors: 0,
            statuses: Default::default(),
            elapsed: Duration::ZERO,
        })
    }

    /// Answered requests per second.
    pub fn rps(&self) -> f64 {
        (self.ok + self.errors) as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency percentile in milliseconds.
    pub fn ms(&self, percentile: f64) -> f64 {
        self.latency.value_at_quantile(percentile / 100.0) as f64 / 1000.0
    }

    /// A service-time percentile in milliseconds.
    pub fn service_ms(&self, percentile: f64) -> f64 {
        self.service.value_at_quantile(percentile / 100.0) as f64 / 1000.0
    }
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")
}

async fn connect(
    addr: std::net::SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn connection(
    shot: Shot,
    mode: Mode,
    connections: u64,
    index: u64,
    start: Instant,
    duration: Duration,
) -> Result<Outcome> {
    let mut sender = connect(shot.addr).await?;
    let mut out = Outcome::empty()?;
    let interval = match mode {
        Mode::Rate(r) => Some(Duration::from_secs_f64(
            connections as f64 / r.max(1) as f64,
        )),
        Mode::Saturate => None,
    };
    // Spread the connections' schedules over one interval so they do not fire together.
    let offset = interval.map_or(Duration::ZERO, |i| {
        i.mul_f64(index as f64 / connections as f64)
    });
    let mut sent: u64 = 0;
    loop {
        let intended = match interval {
            Some(i) => start + offset + i * sent as u32,
            None => Instant::now(),
        };
        if intended.duration_since(start) >= duration {
            break;
        }
        tokio::time::sleep_until(intended.into()).await;
        let mut req = Request::post(shot.path.as_str())
            .header("host", shot.addr.to_string())
            .header("content-length", shot.body.len().to_string());
        for (k, v) in &shot.headers {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(shot.body.clone()))?;
        // A connection the server closed (a keep-alive limit, say) is reopened, as wrk does;
        // the time that takes counts against the request.
        if sender.ready().await.is_err() {
            sender = connect(shot.addr).await?;
        }
        let sent_at = Instant::now();
        match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                if (200..300).contains(&status) {
                    out.ok += 1;
                } else {
                    out.errors += 1;
                    *out.statuses.entry(status).or_default() += 1;
                }
            }
            Err(_) => {
                out.errors += 1;
                sender = connect(shot.addr).await?;
            }
        }
        let micros = intended.elapsed().as_micros().clamp(1, 60_000_000) as u64;
        let _ = out.latency.record(micros);
        let _ = out
            .service
            .record(sent_at.elapsed().as_micros().clamp(1, 60_000_000) as u64);
        sent += 1;
    }
    Ok(out)
}

/// Runs `connections` connections against `shot` for `duration` on a thread of its own.
pub fn run(shot: &Shot, mode: Mode, connections: u64, duration: Duration) -> Result<Outcome> {
    let shot = shot.clone();
    std::thread::spawn(move || -> Result<Outcome> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let start = Instant::now() + Duration::from_millis(50);
            let tasks: Vec<_> = (0..connections)
                .map(|i| {
                    tokio::spawn(connection(
                        shot.clone(),
                        mode,
                        connections,
                        i,
                        start,
                        duration,
                    ))
                })
                .collect();
            let mut total = Outcome::empty()?;
            for t in tasks {
                let o = t.await??;
                total.latency.add(&o.latency)?;
                total.service.add(&o.service)?;
                total.ok += o.ok;
                total.errors += o.errors;
                for (s, n) in o.statuses {
                    *total.statuses.entry(s).or_default() += n;
                }
            }
            total.elapsed = start.elapsed();
            Ok(total)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the load thread panicked"))?
}
