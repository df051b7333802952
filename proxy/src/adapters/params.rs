//! Which parameters each Stripe endpoint takes through the proxy, and which stay off unless the
//! SpendPolicy turns them on (`spec.scope.parameters`). The lists are data
//! (`params/stripe.txt`), derived from Stripe's own description of its API and checked against it
//! by the e2e test `stripe_parameters`; this module reads them once and applies them.
//!
//! A parameter a row does not list is refused: the costing and scope rules were written for the
//! parameters Stripe documents, and one the proxy has never heard of may move money or reach
//! objects in ways nothing here reads. Gated parameters (connected accounts, `expand`, discounts,
//! default payment methods) are refused on every Stripe call, reads included, wherever they are
//! nested, until the policy grants them for the endpoint.

use std::sync::LazyLock;

use keybrake_crds::{Vendor, scope::Scope};

use super::{error::BadRequest, request::Request, stripe, table};

/// Why the parameter data is not usable (a test fails on it; at run time every Stripe call is
/// then refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("params/stripe.txt line {line}: {why}")]
pub struct DataError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub why: String,
}

/// One endpoint's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// HTTP method, as in the metering table.
    pub method: &'static str,
    /// Path, as in the metering table (`{id}` for an object id).
    pub path: &'static str,
    /// The top-level parameters the endpoint accepts.
    pub accepted: Vec<&'static str>,
    /// Those of `accepted` that are gated on this endpoint only (`!NAME` in the data).
    pub gated: Vec<&'static str>,
}

/// A vendor's parameter table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Names gated on every call, as a parameter or as any key nested in one.
    pub gated: Vec<&'static str>,
    /// One row per metering-table endpoint.
    pub rows: Vec<Row>,
}

/// A Stripe parameter name or nested key: lower case, digits and `_`, starting with a letter.
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Table {
    /// Parses the data format described at the top of `params/stripe.txt`. Strict: anything
    /// unexpected is an error, never skipped, so a typo cannot silently open or close a row.
    pub fn parse(text: &'static str) -> Result<Table, DataError> {
        let mut gated: Vec<&'static str> = Vec::new();
        let mut rows: Vec<Row> = Vec::new();
        let mut row_lines = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let err = |why: String| DataError { line: i + 1, why };
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split(' ');
            let first = words.next().unwrap_or_default();
            if first == "gated" {
                for name in words {
                    if !is_name(name) {
                        return Err(err(format!("{name:?} is not a parameter name")));
                    }
                    if gated.contains(&name) {
                        return Err(err(format!("{name} is gated twice")));
                    }
                    gated.push(name);
                }
                continue;
            }
            if !matches!(first, "GET" | "POST" | "DELETE") {
                return Err(err(format!(
                    "{first:?} starts neither a `gated` line nor a row (GET, POST or DELETE)"
                )));
            }
            let path = words.next().unwrap_or_default();
            if !path.starts_with("/v1/") || path.contains(['?', '#']) {
                return Err(err(format!("{path:?} is not a /v1/ path")));
            }
            if rows.iter().any(|r| r.method == first && r.path == path) {
                return Err(err(format!("{first} {path} is listed twice")));
            }
            let mut row = Row {
                method: first,
                path,
                accepted: Vec::new(),
                gated: Vec::new(),
            };
            for word in words {
                let (name, row_gated) = match word.strip_prefix('!') {
                    Some(n) => (n, true),
                    None => (word, false),
                };
                if !is_name(name) {
                    return Err(err(format!("{word:?} is not a parameter name")));
                }
                if row.accepted.contains(&name) {
                    return Err(err(format!("{name} is listed twice on {first} {path}")));
                }
                row.accepted.push(name);
                if row_gated {
                    row.gated.push(name);
                }
            }
            rows.push(row);
            row_lines.push(i + 1);
        }
        // A row may only gate what is not gated everywhere already: one place says it.
        for (r, line) in rows.iter().zip(row_lines) {
            if let Some(g) = r.gated.iter().find(|g| gated.contains(g)) {
                return Err(DataError {
                    line,
                    why: format!(
                        "!{g} on {} {} is gated on every row already",
                        r.method, r.path
                    ),
                });
            }
        }
        Ok(Table { gated, rows })
    }

    /// The row for a metering-table entry.
    pub fn row(&self, method: &str, path: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.method == method && r.path == path)
    }
}

static STRIPE: LazyLock<Result<Table, DataError>> =
    LazyLock::new(|| Table::parse(include_str!("params/stripe.txt")));

/// The Stripe parameter table.
pub fn stripe_table() -> Result<&'static Table, &'static DataError> {
    STRIPE.as_ref()
}

/// The keys of a form parameter name: `payment_intent_data[transfer_data][destination]` gives
/// `payment_intent_data`, `transfer_data`, `destination`. Keys after a `metadata` key are the
/// caller's own words, so they are left out (a metadata key called `expand` is not `expand`).
fn keys(name: &str) -> impl Iterator<Item = &str> {
    name.split(['[', ']'])
        .filter(|k| !k.is_empty())
        .take_while(|k| *k != "metadata")
}

/// Refuses a Stripe call that sends a parameter its endpoint does not take, or a gated one the
/// policy did not turn on for the endpoint. Calls to other vendors pass (Twilio and Resend check
/// their parameters where they read them).
pub fn check(call: &Request, scope: &Scope) -> Result<(), BadRequest> {
    if call.vendor != Vendor::Stripe {
        return Ok(());
    }
    let data = stripe_table().map_err(|e| {
        BadRequest::Refused(format!(
            "the proxy's Stripe parameter table is unusable ({e})"
        ))
    })?;
    // Reads have no row, and a refused row's call is refused by its cost rule with its reason:
    // only the gates apply to them.
    let entry = (!call.is_read())
        .then(|| table::find(stripe::ENDPOINTS, &call.method, &call.path))
        .flatten()
        .filter(|e| !matches!(e.rule, table::Rule::Refused(_)));
    // A metering row the data has no list for accepts nothing (a unit test keeps that empty).
    let row = entry.map(|e| data.row(e.method, e.path));
    let endpoint = grant_endpoint(call, entry);
    let refuse = |parameter: &str, grant: Option<&str>| BadRequest::NotAllowed {
        parameter: parameter.to_owned(),
        endpoint: endpoint.clone(),
        grant: grant.map(str::to_owned),
    };
    let granted = |name: &str| scope.parameter_granted(&call.method, &call.path, name);
    for (name, _) in call.pairs() {
        let root = name.split('[').next().unwrap_or_default();
        if let Some(row) = row {
            let accepted = row.is_some_and(|r| r.accepted.contains(&root));
            if !accepted {
                return Err(refuse(name, None));
            }
        }
        // Granting a parameter turns on everything nested under it.
        if granted(root) {
            continue;
        }
        let row_gated = row.flatten().is_some_and(|r| r.gated.contains(&root));
        if row_gated {
            return Err(refuse(name, Some(root)));
        }
        if let Some(key) = keys(name).find(|k| data.gated.contains(k) && !granted(k)) {
            return Err(refuse(name, Some(key)));
        }
    }
    Ok(())
}

/// The endpoint as a grant would name it: `*` for the object ids where the metering table has
/// `{id}` (`GET /v1/customers/*`), so the advice in a refusal covers more than the one object.
fn grant_endpoint(call: &Request, entry: Option<&table::Entry>) -> String {
    let shape = entry.map(|e| e.path).or_else(|| {
        stripe::ENDPOINTS
            .iter()
            .map(|e| e.path)
            .find(|p| table::fits(p, &call.path))
    });
    let path = match shape {
        // `fits` holds: the same number of segments on both sides.
        Some(shape) => shape
            .split('/')
            .zip(call.path.split('/'))
            .map(|(p, s)| {
                if p == "{id}" && s.contains('_') {
                    "*"
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/"),
        None => call.path.clone(),
    };
    format!("{} {path}", call.method)
}

#[cfg(test)]
mod tests {
    use keybrake_crds::scope::ParameterGrant;

    use super::{
        super::{table::Rule, testing::try_call},
        *,
    };

    fn scope(grants: &[(&str, &[&str])]) -> Scope {
        Scope {
            parameters: grants
                .iter()
                .map(|(endpoint, names)| ParameterGrant {
                    endpoint: endpoint.parse().unwrap(),
                    parameters: names
                        .iter()
                        .map(|n| keybrake_crds::scope::ParameterName((*n).to_owned()))
                        .collect(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn checked(method: &str, path: &str, params: &str, scope: &Scope) -> Result<(), BadRequest> {
        check(&try_call(Vendor::Stripe, method, path, params)?, scope)
    }

    fn refused(method: &str, path: &str, params: &str, scope: &Scope) -> (String, Option<String>) {
        match checked(method, path, params, scope) {
            Err(BadRequest::NotAllowed {
                parameter, grant, ..
            }) => (parameter, grant),
            other => panic!("{method} {path} {params}: {other:?}"),
        }
    }

    #[test]
    fn the_data_parses() {
        let t = stripe_table().unwrap();
        assert!(t.gated.contains(&"expand"));
    }

    /// Every Stripe row of the metering table has a list, and every list is for a row: an
    /// endpoint cannot be added to the table without saying which parameters it takes.
    #[test]
    fn every_metering_row_has_a_list_and_every_list_a_row() {
        let t = stripe_table().unwrap();
        for e in stripe::ENDPOINTS {
            if matches!(e.rule, Rule::Refused(_)) {
                continue;
            }
            assert!(
                t.row(e.method, e.path).is_some(),
                "params/stripe.txt has no list for {} {}",
                e.method,
                e.path
            );
        }
        for r in &t.rows {
            assert!(
                stripe::ENDPOINTS
                    .iter()
                    .any(|e| e.method == r.method && e.path == r.path),
                "params/stripe.txt lists {} {}, which is not a metering row",
                r.method,
                r.path
            );
        }
    }

    /// `docs/metering.md` names every gated parameter, so a policy author can find what to grant.
    #[test]
    fn the_docs_name_every_gated_parameter() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metering.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let t = stripe_table().unwrap();
        let row_gated = t.rows.iter().flat_map(|r| r.gated.iter());
        for name in t.gated.iter().chain(row_gated) {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/metering.md does not name the gated parameter {name}"
            );
        }
    }

    #[test]
    fn malformed_data_is_an_error() {
        for bad in [
            "PUT /v1/x a\n",
            "POST v1/x a\n",
            "POST /v1/x a a\n",
            "POST /v1/x A\n",
            "POST /v1/x a[b]\n",
            "POST /v1/x a\nPOST /v1/x b\n",
            "gated a a\n",
            "gated expand\nPOST /v1/x !expand\n",
            "gatd expand\n",
            "POST /v1/x  a\n",
        ] {
            assert!(Table::parse(bad).is_err(), "{bad:?}");
        }
        let t = Table::parse("# c\n\ngated e\nPOST /v1/x a !b\nDELETE /v1/x/{id}\n").unwrap();
        assert_eq!(t.gated, ["e"]);
        assert_eq!(t.rows[0].accepted, ["a", "b"]);
        assert_eq!(t.rows[0].gated, ["b"]);
        assert!(t.rows[1].accepted.is_empty());
    }

    #[test]
    fn rows_accept_only_their_parameters() {
        let none = Scope::default();
        for (path, params) in [
            (
                "/v1/payment_intents",
                "amount=100&currency=usd&metadata[expand]=x&metadata[on_behalf_of]=y",
            ),
            (
                "/v1/payment_intents",
                "amount=100&currency=usd&payment_method_options[card][request_three_d_secure]=any",
            ),
            ("/v1/payment_intents/pi_1/capture", "amount_to_capture=5"),
            (
                "/v1/customers/cus_1",
                "email=a%40b.c&invoice_settings[footer]=x",
            ),
        ] {
            checked("POST", path, params, &none).unwrap();
        }
        let (p, grant) = refused(
            "POST",
            "/v1/payment_intents",
            "amount=100&currency=usd&amount_to_capture=5",
            &none,
        );
        assert_eq!((p.as_str(), grant), ("amount_to_capture", None));
        // Not documented at all: no grant can turn it on.
        let all = scope(&[("POST /v1/customers", &["account_balance"])]);
        assert_eq!(
            refused("POST", "/v1/customers", "account_balance=5", &all).1,
            None
        );
        assert_eq!(
            refused("DELETE", "/v1/customers/cus_1", "x=1", &none).0,
            "x"
        );
    }

    #[test]
    fn gated_parameters_need_a_grant_for_their_endpoint() {
        let none = Scope::default();
        for (method, path, params, grant) in [
            (
                "POST",
                "/v1/payment_intents",
                "amount=1&currency=usd&on_behalf_of=acct_1",
                "on_behalf_of",
            ),
            (
                "POST",
                "/v1/payment_intents",
                "amount=1&currency=usd&transfer_data[destination]=acct_1",
                "transfer_data",
            ),
            (
                "POST",
                "/v1/payment_intents",
                "amount=1&currency=usd&expand[]=latest_charge",
                "expand",
            ),
            (
                "POST",
                "/v1/checkout/sessions",
                "mode=payment&payment_intent_data[transfer_data][destination]=acct_1",
                "transfer_data",
            ),
            (
                "POST",
                "/v1/checkout/sessions",
                "mode=subscription&subscription_data[application_fee_percent]=5",
                "application_fee_percent",
            ),
            (
                "POST",
                "/v1/customers/cus_1",
                "invoice_settings[default_payment_method]=pm_1",
                "default_payment_method",
            ),
            (
                "POST",
                "/v1/customers/cus_1",
                "default_source=card_1",
                "default_source",
            ),
            ("POST", "/v1/customers", "source=tok_visa", "source"),
            (
                "POST",
                "/v1/charges",
                "amount=1&currency=usd&destination[account]=acct_1",
                "destination",
            ),
            (
                "POST",
                "/v1/subscriptions",
                "customer=cus_1&items[0][price]=p&discounts[0][coupon]=c",
                "discounts",
            ),
            (
                "POST",
                "/v1/invoiceitems",
                "customer=cus_1&amount=1&currency=usd&discounts[0][promotion_code]=p",
                "discounts",
            ),
            (
                "GET",
                "/v1/customers/cus_1",
                "expand[]=default_source",
                "expand",
            ),
            (
                "GET",
                "/v1/payment_intents",
                "expand[0]=data.customer",
                "expand",
            ),
            ("GET", "/v1/charges", "transfer_group=g", "transfer_group"),
        ] {
            let (_, got) = refused(method, path, params, &none);
            assert_eq!(got.as_deref(), Some(grant), "{method} {path} {params}");
            // The advice works: granting what the refusal names lets the call through.
            let Err(BadRequest::NotAllowed { endpoint, .. }) = checked(method, path, params, &none)
            else {
                unreachable!()
            };
            let s = scope(&[(endpoint.as_str(), &[grant])]);
            checked(method, path, params, &s)
                .unwrap_or_else(|e| panic!("{endpoint} granting {grant}: {e}"));
        }
        // Granted for the endpoint: the parameter passes there, and only there.
        let s = scope(&[
            ("POST /v1/payment_intents", &["on_behalf_of", "expand"]),
            ("GET /v1/customers/*", &["expand"]),
            ("POST /v1/checkout/sessions", &["transfer_data"]),
            ("POST /v1/customers/*", &["invoice_settings"]),
        ]);
        for (method, path, params) in [
            (
                "POST",
                "/v1/payment_intents",
                "amount=1&currency=usd&on_behalf_of=acct_1&expand[]=latest_charge",
            ),
            ("GET", "/v1/customers/cus_1", "expand[]=default_source"),
            (
                "POST",
                "/v1/checkout/sessions",
                "mode=payment&payment_intent_data[transfer_data][destination]=acct_1&subscription_data[transfer_data][destination]=acct_1",
            ),
            // Granting a parameter turns on everything under it.
            (
                "POST",
                "/v1/customers/cus_1",
                "invoice_settings[default_payment_method]=pm_1",
            ),
        ] {
            checked(method, path, params, &s).unwrap_or_else(|e| panic!("{path} {params}: {e}"));
        }
        assert!(
            checked(
                "POST",
                "/v1/charges",
                "amount=1&currency=usd&on_behalf_of=acct_1",
                &s
            )
            .is_err()
        );
        assert!(checked("GET", "/v1/payment_intents/pi_1", "expand[]=customer", &s).is_err());
        assert!(
            checked(
                "POST",
                "/v1/payment_intents",
                "amount=1&currency=usd&transfer_data[destination]=acct_1",
                &s
            )
            .is_err()
        );
        // A refused row is left to its cost rule to refuse, with its reason.
        for e in stripe::ENDPOINTS
            .iter()
            .filter(|e| matches!(e.rule, Rule::Refused(_)))
        {
            let path = e.path.replace("{id}", "x_1");
            checked(e.method, &path, "anything=1", &none).unwrap();
            assert!(checked(e.method, &path, "expand[]=x", &none).is_err());
        }
        // A write outside the metering table is still gated.
        assert_eq!(
            refused("POST", "/v1/accounts", "expand[]=x", &none)
                .1
                .as_deref(),
            Some("expand")
        );
        assert!(checked("POST", "/v1/accounts", "type=custom", &none).is_ok());
    }

    /// The parameters the shipped examples, the seeds and the SDK tests send.
    #[test]
    fn the_shipped_flows_pass() {
        let none = Scope::default();
        for (method, path, params) in [
            (
                "POST",
                "/v1/payment_intents",
                "amount=1250&currency=usd&payment_method=pm_card_visa&confirm=true",
            ),
            (
                "POST",
                "/v1/payment_intents",
                "amount=1250&currency=usd&customer=cus_1&payment_method=pm_card_visa&confirm=true&metadata[run]=r1",
            ),
            (
                "POST",
                "/v1/payment_intents",
                "amount=20000&currency=usd&confirm=true&capture_method=manual&off_session=true&description=d&receipt_email=a%40b.c&statement_descriptor=x&setup_future_usage=off_session",
            ),
            (
                "POST",
                "/v1/payment_intents/pi_1/confirm",
                "payment_method=pm_card_visa",
            ),
            (
                "POST",
                "/v1/payment_intents/pi_1/capture",
                "amount_to_capture=100",
            ),
            (
                "POST",
                "/v1/payment_intents/pi_1/increment_authorization",
                "amount=500",
            ),
            (
                "POST",
                "/v1/payment_intents/pi_1",
                "amount=500&description=x",
            ),
            (
                "POST",
                "/v1/customers",
                "email=a%40example.com&name=A&metadata[team]=t",
            ),
            ("POST", "/v1/refunds", "payment_intent=pi_1&amount=250"),
            ("POST", "/v1/refunds", "charge=ch_1"),
            (
                "POST",
                "/v1/transfers",
                "amount=500&currency=usd&destination=acct_1",
            ),
            ("POST", "/v1/payouts", "amount=500&currency=usd"),
            ("POST", "/v1/topups", "amount=500&currency=usd"),
            (
                "POST",
                "/v1/charges",
                "amount=1000&currency=usd&source=tok_visa&capture=false",
            ),
            (
                "POST",
                "/v1/subscriptions",
                "customer=cus_1&items[0][price]=price_a&items[0][quantity]=3",
            ),
            ("POST", "/v1/invoices", "customer=cus_1&auto_advance=false"),
            (
                "POST",
                "/v1/invoiceitems",
                "customer=cus_1&amount=99999&currency=usd",
            ),
            (
                "POST",
                "/v1/plans",
                "amount=500&currency=usd&interval=month&product=prod_1&id=gold",
            ),
            (
                "POST",
                "/v1/prices",
                "unit_amount=100&currency=usd&product=prod_1",
            ),
            ("DELETE", "/v1/subscriptions/sub_1", "invoice_now=false"),
            (
                "GET",
                "/v1/customers/search",
                "query=email%3A%27a%27&limit=3",
            ),
            ("GET", "/v1/payment_intents/pi_1", ""),
        ] {
            checked(method, path, params, &none)
                .unwrap_or_else(|e| panic!("{method} {path} {params}: {e}"));
        }
    }

    #[test]
    fn the_refusal_says_what_to_grant() {
        let e = checked(
            "POST",
            "/v1/payment_intents/pi_1/capture",
            "transfer_data[amount]=5",
            &Scope::default(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "parameter_not_allowed");
        assert!(e.is_policy());
        let text = e.to_string();
        assert!(text.contains("transfer_data[amount]"), "{text}");
        assert!(
            text.contains("POST /v1/payment_intents/*/capture"),
            "{text}"
        );
        assert!(text.contains("spec.scope.parameters"), "{text}");
        assert!(text.contains("\"transfer_data\""), "{text}");
        let plain = checked(
            "POST",
            "/v1/refunds/re_1/cancel",
            "amount=1",
            &Scope::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            plain.contains("amount") && !plain.contains("spec.scope"),
            "{plain}"
        );
        // A policy decision in Stripe's shape: 403, not retried, the code and the words.
        let r = crate::refusal::Refusal::from(e.clone());
        assert_eq!((r.code(), r.rule()), ("parameter_not_allowed", "parameter"));
        let (status, headers, body) = crate::refusal::render(Vendor::Stripe, &r);
        assert_eq!(status, 403);
        assert!(headers.contains(&("stripe-should-retry", "false".into())));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "parameter_not_allowed");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("parameter_not_allowed: transfer_data[amount] on POST /v1/payment_intents/*/capture")),
            "{v}"
        );
    }

    #[test]
    fn other_vendors_pass() {
        let c = try_call(
            Vendor::Twilio,
            "POST",
            "/2010-04-01/Accounts/AC1/Messages.json",
            "To=%2B1555&From=%2B1556&Body=hi",
        )
        .unwrap();
        assert!(check(&c, &Scope::default()).is_ok());
    }
}
