//! A front for the API server that answers chosen requests with an error instead of passing
//! them on: how a test shows a client retrying the 429 and 500 a loaded kube-apiserver gives.
//! The real server has no way to fail on request, so the front terminates TLS with the server's
//! own certificate, passes every other request through unchanged (watches included), and
//! counts down the faults it was given.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use keybrake_control_plane::ControlPlane;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

/// Answer `code` to the next `remaining` requests whose path contains `path_contains`.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The HTTP status to answer.
    pub code: u16,
    /// A part of the request path (`/vaultkeys/NAME/status`).
    pub path_contains: String,
    /// How many requests to fail.
    pub remaining: usize,
}

/// The running front; stops when dropped.
pub struct ApiFaults {
    /// Where clients connect instead of the API server.
    pub addr: SocketAddr,
    faults: Arc<Mutex<Vec<Fault>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiFaults {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

impl ApiFaults {
    /// Starts a front for `plane` on a free loopback port.
    pub async fn start(plane: &ControlPlane) -> Result<ApiFaults> {
        let (cert, key) = plane.serving_files();
        let chain = CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(plane.ca_pem()?.as_bytes()) {
            roots.add(ca?)?;
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let upstream = plane.addr();
        let faults: Arc<Mutex<Vec<Fault>>> = Arc::default();
        let shared = faults.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, connector, faults) =
                    (acceptor.clone(), connector.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let (connector, faults) = (connector.clone(), faults.clone());
                        async move { answer(req, upstream, &connector, &faults).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(ApiFaults { addr, faults, task })
    }

    /// Adds a fault.
    pub fn inject(&self, fault: Fault) {
        if let Ok(mut f) = self.faults.lock() {
            f.push(fault);
        }
    }

    /// How many requests the faults given still have to fail.
    pub fn faults_pending(&self) -> usize {
        self.faults
            .lock()
            .map(|f| f.iter().map(|f| f.remaining).sum())
            .unwrap_or(0)
    }

    /// A kube-rs client through the front that presents `token`.
    pub async fn client(&self, plane: &ControlPlane, token: &str) -> Result<kube::Client> {
        let yaml = keybrake_control_plane::kubeconfig_yaml(
            &format!("https://{}", self.addr),
            &plane.ca_pem()?,
            token,
        );
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }
}

/// A fault's answer, or the API server's.
async fn answer(
    req: Request<Incoming>,
    upstream: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    faults: &Mutex<Vec<Fault>>,
) -> Result<Response<Body>> {
    let path = req.uri().path().to_owned();
    let hit = faults.lock().ok().and_then(|mut all| {
        let fault = all
            .iter_mut()
            .find(|f| f.remaining > 0 && path.contains(&f.path_contains))?;
        fault.remaining -= 1;
        Some(fault.code)
    });
    if let Some(code) = hit {
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("injected by the test front: {code}"), "code": code,
        });
        let body = Full::new(Bytes::from(status.to_string()))
            .map_err(|never| match never {})
            .boxed();
        return Ok(Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .header("retry-after", "1")
            .body(body)?);
    }
    let tcp = tokio::net::TcpStream::connect(upstream).await?;
    let tls = connector
        .connect(ServerName::IpAddress(upstream.ip().into()), tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .context("connecting to the API server")?;
    tokio::spawn(conn);
    let reply = sender.send_request(req).await?;
    Ok(reply.map(BodyExt::boxed))
}
