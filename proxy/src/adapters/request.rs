//! One request as its vendor will read it ([`Request`]), and how it is costed: before it is sent
//! ([`Plan`]) and once answered ([`Settled`]).

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use keybrake_crds::{Usd, Vendor};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{error::BadRequest, form};

/// The parameters of a call, as the vendor reads them.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// Form parameters (Stripe, Twilio; also every vendor's query strings).
    Form(Vec<(String, String)>),
    /// A JSON body (Resend).
    Json(Value),
}

/// One request, read as its vendor will read it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The vendor.
    pub vendor: Vendor,
    /// Upper-case method.
    pub method: String,
    /// Canonical path (no vendor prefix, no query, no trailing slash).
    pub path: String,
    /// The parameters: from the query for reads and deletes, from the body for other writes.
    pub params: Params,
    /// Headers to forward.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The caller's Idempotency-Key, on writes.
    pub idempotency_key: Option<String>,
}
/// The longest path read: the vendors' own paths are far shorter, and a refusal writes the path
/// into the audit stream.
pub const MAX_PATH: usize = 512;

/// Where a method's parameters travel, as the vendors' SDKs send them.
pub(super) fn params_in_query(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "DELETE")
}

impl Request {
    /// A read: the only calls that pass a spent cap.
    pub fn is_read(&self) -> bool {
        matches!(self.method.as_str(), "GET" | "HEAD")
    }

    /// A form parameter's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        match &self.params {
            Params::Form(pairs) => form::field(pairs, name),
            Params::Json(_) => None,
        }
    }

    /// The form pairs (empty for JSON calls).
    pub fn pairs(&self) -> &[(String, String)] {
        match &self.params {
            Params::Form(pairs) => pairs,
            Params::Json(_) => &[],
        }
    }

    /// What goes on the wire: the query string and the body with its content type, all the
    /// proxy's own encoding of [`Request::params`].
    pub fn encoded(&self) -> (Option<String>, Bytes, Option<&'static str>) {
        match (&self.params, params_in_query(&self.method)) {
            (Params::Form(pairs), true) => (
                (!pairs.is_empty()).then(|| form::encode(pairs)),
                Bytes::new(),
                None,
            ),
            (Params::Form(pairs), false) => (
                None,
                Bytes::from(form::encode(pairs)),
                Some("application/x-www-form-urlencoded"),
            ),
            (Params::Json(v), _) => (None, Bytes::from(v.to_string()), Some("application/json")),
        }
    }

    /// What a reused Idempotency-Key must keep matching: the encoded call and the headers that
    /// change how the vendor reads it (an API version the vendor would refuse could otherwise
    /// turn a re-attempt into a 4xx).
    pub fn fingerprint(&self) -> String {
        let (query, body, _) = self.encoded();
        let reading: Vec<u8> = self
            .headers
            .iter()
            .filter(|(n, _)| matches!(n.as_str(), "stripe-version" | "x-batch-validation"))
            .flat_map(|(n, v)| [n.as_str().as_bytes(), b":", v.as_bytes(), b"\n"].concat())
            .collect();
        hex::encode(Sha256::digest(
            [
                self.method.as_bytes(),
                b"\n",
                self.path.as_bytes(),
                b"\n",
                query.as_deref().unwrap_or("").as_bytes(),
                b"\n",
                &reading,
                b"\n",
                &body,
            ]
            .concat(),
        ))
    }

    /// The path's segments.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }
}

/// Costs read from vendor objects, fetched with the real key once the key was admitted.
pub struct Prefetch {
    /// Vendor paths to GET.
    pub reads: Vec<String>,
    /// The object whose money this key may already have counted (subtracted from the cost).
    pub object: Option<String>,
    /// The cost from the objects read (in `reads` order) and what this key counted for `object`.
    #[allow(clippy::type_complexity)]
    pub cost: Box<dyn FnOnce(&[Value], Usd) -> Result<Usd, BadRequest> + Send>,
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("reads", &self.reads)
            .field("object", &self.object)
            .finish_non_exhaustive()
    }
}

/// How a call is costed before it is sent.
#[derive(Debug)]
pub enum Plan {
    /// Known from the request (0 for calls that move no money).
    Known(Usd),
    /// Read vendor objects first.
    Prefetch(Prefetch),
}

/// What a settled call cost, and the vendor object its money belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The actual cost.
    pub usd: Usd,
    /// The object (a PaymentIntent, a Charge) this key has now counted `usd` for.
    pub object: Option<String>,
}
