//! Vendor adapters: the only readers of a raw request. Each turns method, path, query, headers
//! and body into one [`Request`], the request as that vendor will read it; the cost, the allowlist
//! and the forwarder all use that one value, and what is forwarded is the proxy's own encoding
//! of it. A request that cannot be read exactly so is refused. Pure functions: every parser and
//! cost rule is tested without a network.

//!
//! This module reads a request ([`read`]) and sends the costing of a call to its vendor's
//! adapter; what those adapters share is in modules of its own ([`Request`] in `request.rs`,
//! [`BadRequest`] in `error.rs`, the metering table's types in [`table`]), so no adapter uses this
//! one.

mod error;
pub mod form;
pub mod headers;
pub mod json;
pub mod money;
pub mod params;
pub mod reach;
mod request;
pub mod resend;
pub mod stripe;
pub mod table;
pub mod twilio;

use hyper::{HeaderMap, header::CONTENT_TYPE};
use keybrake_crds::{Usd, Vendor, spend_policy::Pricing};
use serde_json::Value;

pub use error::BadRequest;
use request::params_in_query;
pub use request::{MAX_PATH, Params, Plan, Prefetch, Request, Settled};

/// The metering table of `vendor`.
pub fn endpoints(vendor: Vendor) -> &'static [table::Entry] {
    match vendor {
        Vendor::Stripe => stripe::ENDPOINTS,
        Vendor::Twilio => twilio::ENDPOINTS,
        Vendor::Resend => resend::ENDPOINTS,
    }
}

fn content_type(headers: &HeaderMap) -> Result<Option<String>, BadRequest> {
    let mut all = headers.get_all(CONTENT_TYPE).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(BadRequest::Duplicate("the Content-Type header".into()));
    }
    let text = v
        .to_str()
        .map_err(|_| BadRequest::ContentType("(not ASCII)".into(), "a plain content type"))?;
    let mut parts = text.split(';').map(|p| p.trim().to_ascii_lowercase());
    let essence = parts.next().unwrap_or_default();
    for p in parts {
        if p != "charset=utf-8" && !p.is_empty() {
            return Err(BadRequest::ContentType(
                text.to_owned(),
                "it without parameters, or with charset=utf-8",
            ));
        }
    }
    Ok(Some(essence))
}

/// Reads a request as `vendor` will. `path` is already canonical. Long on purpose: every refusal
/// of a request shape the vendors read differently is in one place, in the order they apply.
pub fn read(
    vendor: Vendor,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Request, BadRequest> {
    let method = method.to_ascii_uppercase();
    if vendor == Vendor::Twilio && twilio::exposes_the_auth_token(path) {
        return Err(BadRequest::Refused(format!(
            "{method} {path} returns the account with its auth token, which no vault key may read"
        )));
    }
    if path.len() > MAX_PATH {
        return Err(BadRequest::Invalid(
            "path",
            format!("is longer than {MAX_PATH} characters"),
        ));
    }
    let forward = headers::forwarded(vendor, headers)?;
    let ct = content_type(headers)?;
    let query = query.unwrap_or("");
    let grammar = match vendor {
        Vendor::Stripe => form::Grammar::Stripe,
        Vendor::Twilio => form::Grammar::Twilio(twilio::LIST_PARAMS),
        Vendor::Resend => form::Grammar::Resend,
    };
    let params = if params_in_query(&method) {
        if !body.is_empty() {
            return Err(BadRequest::Placement(
                "a GET, HEAD or DELETE carries its parameters in the query string, never in a body",
            ));
        }
        Params::Form(form::parse(query.as_bytes(), grammar)?)
    } else {
        if !query.is_empty() {
            return Err(BadRequest::Placement(
                "parameters in the query string of a write are not accepted (the vendor would read them with the body); send them in the body",
            ));
        }
        match (vendor, method.as_str()) {
            (Vendor::Stripe | Vendor::Twilio, "POST") => {
                match ct.as_deref() {
                    Some("application/x-www-form-urlencoded") => {}
                    None if body.is_empty() => {}
                    other => {
                        return Err(BadRequest::ContentType(
                            other.unwrap_or("(none)").to_owned(),
                            "application/x-www-form-urlencoded",
                        ));
                    }
                }
                Params::Form(form::parse(body, grammar)?)
            }
            (Vendor::Resend, "POST" | "PATCH" | "PUT") => match ct.as_deref() {
                None if body.is_empty() => Params::Json(Value::Object(Default::default())),
                Some("application/json") => Params::Json(json::strict(body)?),
                other => {
                    return Err(BadRequest::ContentType(
                        other.unwrap_or("(none)").to_owned(),
                        "application/json",
                    ));
                }
            },
            (_, m) => {
                return Err(BadRequest::Refused(format!(
                    "{vendor}'s API takes no {m} requests through the proxy"
                )));
            }
        }
    };
    let idempotency_key = if params_in_query(&method) && method != "DELETE" {
        None
    } else {
        headers
            .get("idempotency-key")
            .map(|v| {
                v.to_str()
                    .ok()
                    .filter(|k| !k.is_empty() && k.len() <= 255)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        BadRequest::Invalid(
                            "Idempotency-Key",
                            "must be 1 to 255 visible ASCII characters".into(),
                        )
                    })
            })
            .transpose()?
    };
    Ok(Request {
        vendor,
        method,
        path: path.to_owned(),
        params,
        headers: forward,
        idempotency_key,
    })
}

/// Costs a call before it is sent: from the request, from objects to read first, or from the
/// policy's opt-in worst case; refused when none applies.
pub fn plan(call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    if call.is_read() {
        return Ok(Plan::Known(Usd::ZERO));
    }
    let entry = table::find(endpoints(call.vendor), &call.method, &call.path);
    let rule = entry.map_or(table::Rule::WorstCase, |e| e.rule);
    match rule {
        table::Rule::Free | table::Rule::Priced | table::Rule::Prefetched => {
            let entry = entry.ok_or_else(|| BadRequest::Refused("no metering rule".into()))?;
            match call.vendor {
                Vendor::Stripe => stripe::plan(entry, call, pricing),
                Vendor::Twilio => twilio::plan(entry, call, pricing),
                Vendor::Resend => resend::plan(entry, call, pricing),
            }
        }
        table::Rule::WorstCase => match (call.vendor, stripe::outlives_the_key(call)) {
            (Vendor::Stripe, Some(why)) => Err(BadRequest::Refused(why)),
            _ => worst_case(call, pricing),
        },
        table::Rule::Refused(why) => Err(BadRequest::Refused(format!(
            "{} {}: {why}",
            call.method, call.path
        ))),
    }
}

/// Until when a call commits money, Unix ms (a subscription's `cancel_at`): the reserve script
/// refuses it past the key's expiry.
pub fn commitment(call: &Request) -> Result<Option<i64>, BadRequest> {
    match call.vendor {
        Vendor::Stripe => stripe::commitment(call),
        Vendor::Twilio | Vendor::Resend => Ok(None),
    }
}

/// The policy's opt-in worst case for a call whose cost cannot be bounded from the request.
fn worst_case(call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    pricing
        .worst_cases
        .iter()
        .find(|w| w.endpoint.matches(&call.method, &call.path))
        .map(|w| Plan::Known(w.usd))
        .ok_or_else(|| {
            BadRequest::Unbounded(format!(
                "the cost of {} {} cannot be bounded from the request",
                call.method, call.path
            ))
        })
}

/// What a refused (4xx) call still left behind that can move money later, if anything: it stays
/// counted (a declined PaymentIntent can be confirmed client-side).
pub fn refused_but_counted(
    call: &Request,
    status: u16,
    v: Option<&Value>,
    reserved: Usd,
) -> Option<Settled> {
    match call.vendor {
        Vendor::Stripe => stripe::declined(call, status, v, reserved),
        Vendor::Twilio | Vendor::Resend => None,
    }
}

/// Costs a successful (2xx) response, its body read as JSON (`None` when it is not);
/// `reserved` is what was reserved for it.
pub fn actual(call: &Request, v: Option<&Value>, pricing: &Pricing, reserved: Usd) -> Settled {
    match call.vendor {
        Vendor::Stripe => stripe::actual(call, v, pricing, reserved),
        Vendor::Twilio => twilio::actual(call, v, pricing, reserved),
        Vendor::Resend => Settled {
            usd: reserved,
            object: None,
        },
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use hyper::header::HeaderValue;

    use super::*;

    /// A call as `read` would make it, from a method, a path and a body or query.
    pub fn call(vendor: Vendor, method: &str, path: &str, params: &str) -> Request {
        try_call(vendor, method, path, params).unwrap()
    }

    /// `read` of a method, a path and a body or query.
    pub fn try_call(
        vendor: Vendor,
        method: &str,
        path: &str,
        params: &str,
    ) -> Result<Request, BadRequest> {
        let mut h = HeaderMap::new();
        let (query, body) = if params_in_query(method) {
            (Some(params), "")
        } else {
            let ct = if vendor == Vendor::Resend {
                "application/json"
            } else {
                "application/x-www-form-urlencoded"
            };
            if !params.is_empty() {
                h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            (None, params)
        };
        read(vendor, method, path, query, &h, body.as_bytes())
    }

    /// A policy's pricing with the rates and prices the tests use.
    pub fn pricing() -> Pricing {
        let mut p = Pricing {
            sms_segment_usd: Some("0.0083".parse().unwrap()),
            mms_usd: Some("0.022".parse().unwrap()),
            email_usd: Some("0.0009".parse().unwrap()),
            ..Default::default()
        };
        p.currency_usd_rates
            .insert("eur".into(), "1.08".parse().unwrap());
        p.currency_usd_rates
            .insert("jpy".into(), "0.0067".parse().unwrap());
        p
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::{testing::*, *};

    fn raw(
        vendor: Vendor,
        method: &str,
        query: Option<&str>,
        ct: Option<&'static str>,
        body: &str,
    ) -> Result<Request, BadRequest> {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        read(
            vendor,
            method,
            "/v1/payment_intents",
            query,
            &h,
            body.as_bytes(),
        )
    }

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn one_reading_per_method() {
        // The issue's own attack: parameters in the query string of a POST.
        assert!(matches!(
            raw(
                Vendor::Stripe,
                "POST",
                Some("amount=99999999&currency=chf"),
                None,
                ""
            ),
            Err(BadRequest::Placement(_))
        ));
        assert!(matches!(
            raw(Vendor::Stripe, "GET", None, FORM, "amount=1"),
            Err(BadRequest::Placement(_))
        ));
        assert!(matches!(
            raw(Vendor::Stripe, "POST", None, Some("application/json"), "{}"),
            Err(BadRequest::ContentType(..))
        ));
        assert!(matches!(
            raw(
                Vendor::Stripe,
                "POST",
                None,
                Some("application/x-www-form-urlencoded; charset=latin1"),
                "a=1"
            ),
            Err(BadRequest::ContentType(..))
        ));
        assert!(matches!(
            raw(Vendor::Stripe, "POST", None, None, "amount=1"),
            Err(BadRequest::ContentType(..))
        ));
        assert!(matches!(
            raw(Vendor::Stripe, "PUT", None, FORM, "amount=1"),
            Err(BadRequest::Refused(_))
        ));
        let ok = raw(
            Vendor::Stripe,
            "POST",
            None,
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            "amount=1&currency=usd",
        )
        .unwrap();
        assert_eq!(ok.field("amount"), Some("1"));
        let get = raw(
            Vendor::Stripe,
            "GET",
            Some("expand[]=customer&limit=3"),
            None,
            "",
        )
        .unwrap();
        assert_eq!(
            get.encoded().0.as_deref(),
            Some("expand%5B%5D=customer&limit=3")
        );
    }

    #[test]
    fn what_is_forwarded_is_the_proxys_encoding_of_what_was_read() {
        let c = call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents",
            "amount=100&currency=usd&metadata[x]=a;amount=999",
        );
        let (query, body, ct) = c.encoded();
        assert_eq!(query, None);
        assert_eq!(ct, Some("application/x-www-form-urlencoded"));
        let reread = form::parse(&body, form::Grammar::Stripe).unwrap();
        assert_eq!(Params::Form(reread), c.params);
        assert!(!String::from_utf8_lossy(&body).contains(';'));
    }

    #[test]
    fn unlisted_writes_need_an_opt_in_and_reads_are_free() {
        let p = pricing();
        let c = call(
            Vendor::Stripe,
            "POST",
            "/v1/checkout/sessions",
            "mode=payment",
        );
        assert!(matches!(plan(&c, &p), Err(BadRequest::Unbounded(_))));
        let mut opted = p.clone();
        opted
            .worst_cases
            .push(keybrake_crds::spend_policy::WorstCase {
                endpoint: "POST /v1/checkout/sessions".parse().unwrap(),
                usd: "50".parse().unwrap(),
            });
        assert!(matches!(plan(&c, &opted), Ok(Plan::Known(u)) if u == "50".parse().unwrap()));
        let sub = call(
            Vendor::Stripe,
            "POST",
            "/v1/checkout/sessions",
            "mode=subscription",
        );
        assert!(matches!(plan(&sub, &opted), Err(BadRequest::Refused(_))));
        let r = call(Vendor::Stripe, "GET", "/v1/customers/search", "query=x");
        assert!(matches!(plan(&r, &p), Ok(Plan::Known(Usd::ZERO))));
    }
}
