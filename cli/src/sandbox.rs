//! Vendor sandboxes: one local server that answers like Stripe's, Twilio's and Resend's test
//! modes for the calls Keybrake meters (so `keybrake dev` works offline), records every request
//! it received, and counts what each call moved (so a test can prove what was, and was not,
//! forwarded, and that no key moved more than its caps).
//!
//! It reads requests the way the vendors do, not the way the proxy does: Stripe and Twilio take
//! parameters from the query string and the form body as one bucket (the last value of a name
//! wins), Resend reads JSON. A request the proxy misread would move money here.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method, as sent.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Authorization header.
    pub authorization: String,
    /// Idempotency-Key header.
    pub idempotency_key: Option<String>,
    /// Accept-Encoding header.
    pub accept_encoding: Option<String>,
    /// Every header, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body as received (UTF-8, lossy).
    pub body: String,
}

/// What one call moved, in the vendor's own units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// `stripe`, `twilio` or `resend`.
    pub vendor: &'static str,
    /// What moved it (`POST /v1/refunds`).
    pub what: String,
    /// A currency code (Stripe), `segment:+1555...` or `mms:+1555...` (Twilio), `recipient` (Resend).
    pub unit: String,
    /// How many: minor currency units, segments, messages or recipients.
    pub units: u64,
}

/// How the upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Like the vendor.
    Normal,
    /// 500 to everything.
    Fail,
    /// Waits this long before answering.
    Slow(Duration),
}

/// The vendor-side objects: PaymentIntents, Charges, Prices.
#[derive(Default)]
struct State {
    n: u64,
    objects: HashMap<String, Value>,
    moved: Vec<Moved>,
}

/// A running sandbox.
pub struct Sandbox {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    state: Arc<Mutex<State>>,
    mode: Arc<Mutex<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

/// Parameters as Stripe and Twilio read them: the query string and a form body, one bucket,
/// the last value of a repeated name winning (what a Rack-style parser does).
pub fn vendor_form(query: &str, body: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in url_pairs(query).into_iter().chain(url_pairs(body)) {
        if !k.ends_with("[]") && k != "MediaUrl" {
            out.retain(|(have, _)| *have != k);
        }
        out.push((k, v));
    }
    out
}

fn url_pairs(text: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn stripe_error(status: u16, message: &str) -> (u16, Value) {
    (
        status,
        json!({"error": {"type": "invalid_request_error", "message": message}}),
    )
}

fn uuid(n: u64) -> String {
    format!("4ef9a417-02e9-4d39-ad75-{n:012x}")
}

/// GSM 03.38's basic table in code order (0x1B, the escape, is no character of a body).
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// GSM 03.38's extension table: character, code after the escape.
const GSM_EXTENSION: [(char, u16); 10] = [
    ('\u{0c}', 0x0A),
    ('^', 0x14),
    ('{', 0x28),
    ('}', 0x29),
    ('\\', 0x2F),
    ('[', 0x3C),
    ('~', 0x3D),
    (']', 0x3E),
    ('|', 0x40),
    ('€', 0x65),
];
const GSM_ESCAPE: u16 = 0x1B;

/// Segments of an SMS as Twilio counts them. Written apart from the proxy's counter, so that the
/// tests compare the proxy with a reading of their own: the body is encoded as a modem sends it
/// (GSM-7 septets with their escapes when every character has one, else UTF-16), then cut into
/// parts of 153 septets or 67 units, moving a cut back by one where it would leave an escape or
/// a high surrogate at the end of a part.
pub fn sms_segments(text: &str) -> u64 {
    let septets: Option<Vec<u16>> = text
        .chars()
        .map(|c| match GSM_BASIC.chars().position(|b| b == c) {
            Some(code) if code != usize::from(GSM_ESCAPE) => Some(vec![code as u16]),
            _ => GSM_EXTENSION
                .iter()
                .find(|(e, _)| *e == c)
                .map(|(_, code)| vec![GSM_ESCAPE, *code]),
        })
        .collect::<Option<Vec<_>>>()
        .map(|v| v.concat());
    let gsm = septets.is_some();
    let (units, single, part) = match septets {
        Some(s) => (s, 160, 153),
        None => (text.encode_utf16().collect::<Vec<_>>(), 70, 67),
    };
    // An escape, or a high surrogate, needs the unit after it in the same part.
    let first_of_pair = |u: u16| {
        if gsm {
            u == GSM_ESCAPE
        } else {
            (0xD800..0xDC00).contains(&u)
        }
    };
    if units.len() <= single {
        return 1;
    }
    let (mut parts, mut rest) = (0, units.as_slice());
    while !rest.is_empty() {
        let mut cut = part.min(rest.len());
        if cut < rest.len() && first_of_pair(rest[cut - 1]) {
            cut -= 1;
        }
        rest = &rest[cut..];
        parts += 1;
    }
    parts
}

impl State {
    /// An id of Stripe's real shape: a prefix and 24 letters and digits (`pi_3Sbx0...01`).
    fn id(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{prefix}_3Sbx{:020}", self.n)
    }

    fn moved(&mut self, vendor: &'static str, what: &str, unit: &str, units: u64) {
        if units > 0 {
            self.moved.push(Moved {
                vendor,
                what: what.to_owned(),
                unit: unit.to_owned(),
                units,
            });
        }
    }

    /// Answers a Stripe call as Stripe would. One match over the endpoints the sandbox serves,
    /// so what each one moves is read in one place.
    fn stripe(&mut self, method: &str, path: &str, p: &[(String, String)]) -> (u16, Value) {
        let what = format!("{method} {path}");
        let amount = |name: &str| get(p, name).and_then(|a| a.parse::<u64>().ok());
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match (method, segs.as_slice()) {
            (
                "POST",
                [
                    "v1",
                    kind @ ("payment_intents" | "charges" | "transfers" | "payouts" | "topups"),
                ],
            ) => {
                let (Some(a), Some(c)) = (amount("amount"), get(p, "currency")) else {
                    return stripe_error(400, "Missing required param: amount or currency.");
                };
                let c = c.to_ascii_lowercase();
                let prefix = match *kind {
                    "payment_intents" => "pi",
                    "charges" => "ch",
                    "transfers" => "tr",
                    "payouts" => "po",
                    _ => "tu",
                };
                let id = self.id(prefix);
                let mut obj = json!({"id": id, "object": kind.trim_end_matches('s'), "amount": a, "currency": c});
                if *kind == "payment_intents" {
                    let confirmed = get(p, "confirm") == Some("true");
                    let manual = get(p, "capture_method") == Some("manual");
                    let status = match (confirmed, manual) {
                        (false, _) => "requires_payment_method",
                        (true, true) => "requires_capture",
                        (true, false) => "succeeded",
                    };
                    if confirmed {
                        self.moved("stripe", &what, &c, a);
                    }
                    obj["status"] = json!(status);
                    obj["amount_received"] = json!(if status == "succeeded" { a } else { 0 });
                    obj["amount_capturable"] =
                        json!(if status == "requires_capture" { a } else { 0 });
                    obj["capture_method"] = json!(if manual { "manual" } else { "automatic" });
                } else {
                    self.moved("stripe", &what, &c, a);
                    obj["status"] = json!("succeeded");
                    obj["captured"] = json!(get(p, "capture") != Some("false"));
                    obj["amount_captured"] = json!(a);
                    obj["paid"] = json!(true);
                }
                self.objects.insert(id, obj.clone());
                (200, obj)
            }
            ("POST", ["v1", "payment_intents", id, action @ ..]) => {
                let Some(mut pi) = self.objects.get(*id).cloned() else {
                    return stripe_error(404, "No such payment_intent");
                };
                let have = pi["amount"].as_u64().unwrap_or(0);
                let c = pi["currency"].as_str().unwrap_or("usd").to_owned();
                let status = pi["status"].as_str().unwrap_or("").to_owned();
                match action {
                    [] => {
                        if let Some(a) = amount("amount") {
                            if status != "requires_payment_method" {
                                return stripe_error(400, "amount cannot be updated now");
                            }
                            pi["amount"] = json!(a);
                        }
                    }
                    ["confirm"] => {
                        if status != "requires_payment_method" {
                            return stripe_error(400, "This PaymentIntent cannot be confirmed");
                        }
                        let manual = pi["capture_method"] == "manual";
                        self.moved("stripe", &what, &c, have);
                        pi["status"] = json!(if manual {
                            "requires_capture"
                        } else {
                            "succeeded"
                        });
                        pi[if manual {
                            "amount_capturable"
                        } else {
                            "amount_received"
                        }] = json!(have);
                    }
                    ["capture"] => {
                        if status != "requires_capture" {
                            return stripe_error(400, "This PaymentIntent cannot be captured");
                        }
                        let take = amount("amount_to_capture").unwrap_or(have).min(have);
                        pi["status"] = json!("succeeded");
                        pi["amount_received"] = json!(take);
                        pi["amount_capturable"] = json!(0);
                    }
                    ["increment_authorization"] => {
                        let Some(a) = amount("amount") else {
                            return stripe_error(400, "Missing required param: amount.");
                        };
                        if status != "requires_capture" || a < have {
                            return stripe_error(400, "cannot increment");
                        }
                        self.moved("stripe", &what, &c, a - have);
                        pi["amount"] = json!(a);
                        pi["amount_capturable"] = json!(a);
                    }
                    ["cancel"] => pi["status"] = json!("canceled"),
                    _ => return stripe_error(404, "Unrecognized request URL"),
                }
                self.objects.insert((*id).to_owned(), pi.clone());
                (200, pi)
            }
            ("POST", ["v1", "refunds"]) => {
                let source = get(p, "payment_intent").or_else(|| get(p, "charge"));
                let Some(obj) = source.and_then(|id| self.objects.get(id)).cloned() else {
                    return stripe_error(404, "No such payment_intent or charge");
                };
                let full = obj["amount_received"]
                    .as_u64()
                    .filter(|a| *a > 0)
                    .or_else(|| obj["amount"].as_u64())
                    .unwrap_or(0);
                let a = amount("amount").unwrap_or(full);
                if a > full {
                    return stripe_error(400, "Refund amount is greater than the charge");
                }
                let c = obj["currency"].as_str().unwrap_or("usd").to_owned();
                self.moved("stripe", &what, &c, a);
                let id = self.id("re");
                (
                    200,
                    json!({"id": id, "object": "refund", "amount": a, "currency": c, "status": "succeeded"}),
                )
            }
            ("POST", ["v1", "prices"]) => {
                let id = self.id("price");
                let obj = json!({"id": id, "object": "price", "unit_amount": amount("unit_amount"), "currency": get(p, "currency").unwrap_or("usd"), "billing_scheme": get(p, "billing_scheme").unwrap_or("per_unit"), "recurring": {"usage_type": get(p, "recurring[usage_type]").unwrap_or("licensed"), "interval": "month"}});
                self.objects.insert(id, obj.clone());
                (200, obj)
            }
            ("POST", ["v1", "invoiceitems"]) => {
                let (Some(a), Some(c), Some(customer)) =
                    (amount("amount"), get(p, "currency"), get(p, "customer"))
                else {
                    return stripe_error(
                        400,
                        "Missing required param: amount, currency or customer.",
                    );
                };
                let id = self.id("ii");
                let obj = json!({"id": id, "object": "invoiceitem", "amount": a, "currency": c, "customer": customer, "pending": true});
                self.objects.insert(id, obj.clone());
                (200, obj)
            }
            ("GET", ["v1", "invoiceitems"]) => {
                let customer = get(p, "customer").unwrap_or_default();
                let data: Vec<Value> = self
                    .objects
                    .values()
                    .filter(|o| {
                        o["object"] == "invoiceitem"
                            && o["customer"] == customer
                            && o["pending"] == true
                    })
                    .cloned()
                    .collect();
                (200, json!({"object": "list", "data": data}))
            }
            ("POST", ["v1", "subscriptions"]) => {
                let mut total: HashMap<String, u64> = HashMap::new();
                // The first invoice charges the customer's pending items too.
                let customer = get(p, "customer").unwrap_or_default().to_owned();
                for item in self.objects.values_mut() {
                    if item["object"] == "invoiceitem"
                        && item["customer"] == customer.as_str()
                        && item["pending"] == true
                    {
                        item["pending"] = json!(false);
                        let c = item["currency"].as_str().unwrap_or("usd").to_owned();
                        *total.entry(c).or_default() += item["amount"].as_u64().unwrap_or(0);
                    }
                }
                for i in 0.. {
                    let Some(price) = get(p, &format!("items[{i}][price]")) else {
                        break;
                    };
                    let Some(obj) = self.objects.get(price) else {
                        return stripe_error(404, "No such price");
                    };
                    let q = amount(&format!("items[{i}][quantity]")).unwrap_or(1);
                    let c = obj["currency"].as_str().unwrap_or("usd").to_owned();
                    *total.entry(c).or_default() += obj["unit_amount"].as_u64().unwrap_or(0) * q;
                }
                for (c, a) in total {
                    self.moved("stripe", &what, &c, a);
                }
                let id = self.id("sub");
                (
                    200,
                    json!({"id": id, "object": "subscription", "status": "active"}),
                )
            }
            ("GET", ["v1", _, id]) => match self.objects.get(*id) {
                Some(obj) => (200, obj.clone()),
                None => stripe_error(404, "No such object"),
            },
            // Stripe takes a caller's own id for these.
            ("POST", ["v1", kind @ ("products" | "plans" | "coupons")]) => {
                let id = match get(p, "id") {
                    Some(id) => id.to_owned(),
                    None => self.id("prod"),
                };
                let obj =
                    json!({"id": id, "object": kind.trim_end_matches('s'), "name": get(p, "name")});
                (200, obj)
            }
            ("POST", ["v1", "customers"]) => {
                let id = self.id("cus");
                let obj =
                    json!({"id": id, "object": "customer", "email": get(p, "email"), "balance": 0});
                self.objects.insert(id, obj.clone());
                (200, obj)
            }
            _ => {
                let id = self.id("obj");
                (200, json!({"id": id, "object": "list", "data": []}))
            }
        }
    }

    fn twilio(&mut self, method: &str, path: &str, p: &[(String, String)]) -> (u16, Value) {
        let n = {
            self.n += 1;
            self.n
        };
        if method == "POST" && path.ends_with("/Messages.json") {
            let text = get(p, "Body").unwrap_or_default().to_owned();
            let to = get(p, "To").unwrap_or_default().to_owned();
            let media = p.iter().filter(|(k, _)| k == "MediaUrl").count();
            let segs = sms_segments(&text);
            let what = format!("{method} {path}");
            if media > 0 {
                self.moved("twilio", &what, &format!("mms:{to}"), 1);
            } else {
                self.moved("twilio", &what, &format!("segment:{to}"), segs);
            }
            return (
                201,
                json!({"sid": format!("SM{n:032x}"), "status": "queued", "to": to, "num_segments": segs.to_string(), "num_media": media.to_string(), "price": null, "body": text}),
            );
        }
        (200, json!({"sid": format!("XX{n:032x}")}))
    }

    fn resend(&mut self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let n = {
            self.n += 1;
            self.n
        };
        let recipients = |email: &Value| -> u64 {
            ["to", "cc", "bcc"]
                .iter()
                .map(|f| match &email[*f] {
                    Value::String(s) => s.split(',').count() as u64,
                    Value::Array(a) => a.len() as u64,
                    _ => 0,
                })
                .sum()
        };
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let what = format!("{method} {path}");
        match (method, path) {
            ("POST", "/emails") => {
                let r = recipients(&v);
                self.moved("resend", &what, "recipient", r);
                (200, json!({"id": uuid(n)}))
            }
            ("POST", "/emails/batch") => {
                let emails = v.as_array().cloned().unwrap_or_default();
                let r = emails.iter().map(recipients).sum();
                self.moved("resend", &what, "recipient", r);
                (
                    200,
                    json!({"data": (0..emails.len()).map(|i| json!({"id": uuid(n * 1000 + i as u64)})).collect::<Vec<_>>()}),
                )
            }
            _ => (200, json!({"id": uuid(n)})),
        }
    }

    fn answer(&mut self, method: &str, uri: &str, body: &str) -> (u16, Value) {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        if path.starts_with("/v1/") {
            self.stripe(method, path, &vendor_form(query, body))
        } else if path.starts_with("/2010-04-01/") {
            self.twilio(method, path, &vendor_form(query, body))
        } else {
            self.resend(method, path, body)
        }
    }
}

impl Sandbox {
    /// Starts on a free loopback port.
    pub async fn start() -> anyhow::Result<Sandbox> {
        Sandbox::start_on("127.0.0.1:0".parse()?).await
    }

    /// Starts on `addr`. One function: the accept loop and the request reading it needs.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Sandbox> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let state: Arc<Mutex<State>> = Arc::default();
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let (reqs, st, md) = (requests.clone(), state.clone(), mode.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (reqs, st, md) = (reqs.clone(), st.clone(), md.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (reqs, st, md) = (reqs.clone(), st.clone(), md.clone());
                        async move {
                            let method = req.method().to_string();
                            let uri = req.uri().to_string();
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let authorization = header("authorization").unwrap_or_default();
                            let idempotency_key = header("idempotency-key");
                            let accept_encoding = header("accept-encoding");
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let body = String::from_utf8_lossy(&body).into_owned();
                            reqs.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(Recorded {
                                    method: method.clone(),
                                    uri: uri.clone(),
                                    authorization,
                                    idempotency_key,
                                    accept_encoding,
                                    headers,
                                    body: body.clone(),
                                });
                            let mode = *md.lock().unwrap_or_else(|p| p.into_inner());
                            if let Mode::Slow(d) = mode {
                                tokio::time::sleep(d).await;
                            }
                            let (status, value) = match mode {
                                Mode::Fail => (
                                    500,
                                    json!({"error": {"type": "api_error", "message": "upstream exploded"}}),
                                ),
                                _ => st
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .answer(&method, &uri, &body),
                            };
                            let n = reqs.lock().unwrap_or_else(|p| p.into_inner()).len();
                            let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status)
                                .unwrap_or(hyper::StatusCode::OK);
                            resp.headers_mut().insert(
                                "content-type",
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            resp.headers_mut().insert(
                                "request-id",
                                hyper::header::HeaderValue::from_str(&format!("req_{n}"))
                                    .unwrap_or(hyper::header::HeaderValue::from_static("req")),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Sandbox {
            addr,
            requests,
            state,
            mode,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What every call so far moved.
    pub fn moved(&self) -> Vec<Moved> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .moved
            .clone()
    }

    /// Creates a vendor object directly (a Price, a PaymentIntent made by someone else), as if
    /// made outside the proxy; returns its id.
    pub fn seed(&self, prefix: &str, mut object: Value) -> String {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let id = st.id(prefix);
        object["id"] = json!(id);
        st.objects.insert(id.clone(), object);
        id
    }

    /// Changes how it answers.
    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::sms_segments;

    #[test]
    fn counts_segments_as_twilio_does() {
        let a = |n| "a".repeat(n);
        let l = |n| "ł".repeat(n);
        for (body, segments) in [
            (String::new(), 1),
            (a(160), 1),
            (a(161), 2),
            (a(306), 2),
            (a(307), 3),
            ("€".repeat(80), 1),
            ("€".repeat(81), 2),
            ("€".repeat(153), 3),
            (format!("{}€{}", a(152), a(152)), 3),
            (format!("{}€{}", a(151), a(152)), 2),
            (format!("{}`", a(69)), 1),
            (format!("{}`", a(70)), 2),
            (format!("{}\u{1b}", a(69)), 1),
            (l(70), 1),
            (l(71), 2),
            (l(134), 2),
            (l(135), 3),
            ("😀".repeat(35), 1),
            ("😀".repeat(36), 2),
            ("😀".repeat(67), 3),
            (format!("{}😀{}", l(66), l(66)), 3),
            (format!("{}😀{}", l(65), l(67)), 2),
            (format!("{}€", l(69)), 1),
        ] {
            assert_eq!(sms_segments(&body), segments, "{body}");
        }
    }
}
