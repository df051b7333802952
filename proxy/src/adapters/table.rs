//! The metering table: every endpoint of the three vendors that can move money or that the proxy
//! knows to move none, with its cost rule. A write not in the table is costed only by the
//! policy's opt-in worst case. `docs/metering.md` is this table rendered, checked by a test.
//! Its types only: each vendor's adapter holds its own rows, and `adapters::endpoints` picks
//! them, so this module knows no vendor's.

use keybrake_crds::Vendor;

/// How an endpoint is costed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Moves no money (still refused once a cap is spent: only reads pass).
    Free,
    /// Costed from the request alone.
    Priced,
    /// Costed from vendor objects read first with the real key, after admission.
    Prefetched,
    /// No bound can be read from the request: refused unless `pricing.worstCases` opts in.
    WorstCase,
    /// Never forwarded, with the reason.
    Refused(&'static str),
}

impl Rule {
    fn label(self) -> &'static str {
        match self {
            Rule::Free => "free",
            Rule::Priced => "priced",
            Rule::Prefetched => "priced from the object",
            Rule::WorstCase => "opt-in worst case",
            Rule::Refused(_) => "refused",
        }
    }
}

/// One endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// HTTP method the entry matches.
    pub method: &'static str,
    /// Path, `{id}` standing for one object id.
    pub path: &'static str,
    /// The rule.
    pub rule: Rule,
    /// How it is costed, or why refused, in words.
    pub how: &'static str,
}

/// Shorthand for table rows.
pub const fn e(method: &'static str, path: &'static str, rule: Rule, how: &'static str) -> Entry {
    Entry {
        method,
        path,
        rule,
        how,
    }
}

/// Whether `path` fits the table path `pattern`.
pub fn fits(pattern: &str, path: &str) -> bool {
    let want: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let have: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    want.len() == have.len()
        && have.iter().zip(&want).all(|(p, s)| {
            // `{id}.json` is Twilio's shape of an id segment.
            match p.strip_prefix("{id}") {
                Some(suffix) => s.len() > suffix.len() && s.ends_with(suffix),
                None => p == s,
            }
        })
}

/// The entry for a call, if the table has one. Literal rows are listed before `{id}` rows that
/// could also fit (`/v1/invoices/create_preview` before `/v1/invoices/{id}`).
pub fn find(entries: &'static [Entry], method: &str, path: &str) -> Option<&'static Entry> {
    entries
        .iter()
        .find(|e| e.method == method && fits(e.path, path))
}

/// The tables as Markdown, one section per vendor, `of` giving each vendor's (what
/// `docs/metering.md` holds).
pub fn markdown(of: fn(Vendor) -> &'static [Entry]) -> String {
    let mut out = String::new();
    for vendor in Vendor::ALL {
        out.push_str(&format!(
            "\n### {vendor}\n\n| endpoint | rule | how |\n|---|---|---|\n"
        ));
        for e in of(vendor) {
            let how = match e.rule {
                Rule::Refused(why) => why,
                _ => e.how,
            };
            out.push_str(&format!(
                "| `{} {}` | {} | {} |\n",
                e.method,
                e.path,
                e.rule.label(),
                how.replace('|', "\\|")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use keybrake_crds::spend_policy::Pricing;

    use super::{
        super::{BadRequest, Plan, endpoints as of, plan, testing},
        *,
    };

    /// A request to a table row, with parameters that make it costable.
    fn sample(vendor: Vendor, e: &Entry) -> super::super::Request {
        let path = e
            .path
            .replace(
                "{id}",
                match vendor {
                    Vendor::Stripe => "pi_1",
                    Vendor::Twilio => "SM0123456789abcdef0123456789abcdef",
                    Vendor::Resend => "4ef9a417-02e9-4d39-ad75-9611e0fcc33c",
                },
            )
            .replace("pi_1.json", "SM0123456789abcdef0123456789abcdef.json");
        let params = match (vendor, e.path) {
            (Vendor::Stripe, "/v1/subscriptions") => {
                "customer=cus_1&items[0][price]=price_1&cancel_at=4102444800"
            }
            (Vendor::Stripe, "/v1/subscriptions/{id}") => "metadata[run]=r1",
            (Vendor::Stripe, "/v1/checkout/sessions") => "mode=payment",
            (Vendor::Stripe, "/v1/refunds") => "payment_intent=pi_1",
            (Vendor::Stripe, "/v1/invoices") => "auto_advance=false",
            (Vendor::Stripe, _) => "amount=100&currency=usd",
            (Vendor::Twilio, _) => "To=%2B15551234567&From=%2B15557654321&Body=hi",
            (Vendor::Resend, "/emails") => r#"{"from":"a@x.io","to":"b@y.io","subject":"s"}"#,
            (Vendor::Resend, "/emails/batch") => r#"[{"from":"a@x.io","to":"b@y.io"}]"#,
            (Vendor::Resend, _) => "{}",
        };
        testing::call(vendor, e.method, &path, params)
    }

    /// Walks every row through the adapters: each rule is the one applied, so an endpoint
    /// cannot be listed without a cost rule that runs.
    #[test]
    fn every_row_is_costed_by_its_own_rule() {
        let p = testing::pricing();
        for vendor in Vendor::ALL {
            for e in of(vendor) {
                let c = sample(vendor, e);
                assert_eq!(
                    find(of(vendor), &c.method, &c.path).map(|f| f.path),
                    Some(e.path),
                    "{vendor} {} {} is shadowed by an earlier row",
                    e.method,
                    e.path
                );
                let got = plan(&c, &p);
                match e.rule {
                    Rule::Free => assert!(
                        matches!(got, Ok(Plan::Known(u)) if u == keybrake_crds::Usd::ZERO),
                        "{vendor} {} {}: {got:?}",
                        e.method,
                        e.path
                    ),
                    Rule::Priced => assert!(
                        matches!(
                            got,
                            Ok(Plan::Known(_))
                                | Err(BadRequest::Invalid(..) | BadRequest::Refused(_))
                        ),
                        "{vendor} {} {}: {got:?}",
                        e.method,
                        e.path
                    ),
                    Rule::Prefetched => assert!(
                        matches!(got, Ok(Plan::Prefetch(_)) | Err(BadRequest::Invalid(..))),
                        "{vendor} {} {}: {got:?}",
                        e.method,
                        e.path
                    ),
                    Rule::WorstCase => {
                        assert!(
                            matches!(got, Err(BadRequest::Unbounded(_))),
                            "{vendor} {} {}: {got:?}",
                            e.method,
                            e.path
                        );
                        let mut opted: Pricing = p.clone();
                        opted
                            .worst_cases
                            .push(keybrake_crds::spend_policy::WorstCase {
                                endpoint: format!("{} {}", e.method, c.path).parse().unwrap(),
                                usd: "3".parse().unwrap(),
                            });
                        assert!(matches!(plan(&c, &opted), Ok(Plan::Known(_))));
                    }
                    Rule::Refused(_) => assert!(
                        matches!(got, Err(BadRequest::Refused(_))),
                        "{vendor} {} {}: {got:?}",
                        e.method,
                        e.path
                    ),
                }
            }
        }
    }

    /// `docs/metering.md` is the table; regenerate it with `KEYBRAKE_BLESS=1 cargo test`.
    #[test]
    fn the_docs_show_this_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metering.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        let (begin, end) = ("<!-- table:begin -->", "<!-- table:end -->");
        let (Some(b), Some(en)) = (doc.find(begin), doc.find(end)) else {
            panic!("docs/metering.md lacks the {begin} and {end} markers");
        };
        let want = format!("{begin}\n{}{end}", markdown(of));
        let have = &doc[b..en + end.len()];
        if have != want {
            if std::env::var_os("KEYBRAKE_BLESS").is_some() {
                let new = format!("{}{want}{}", &doc[..b], &doc[en + end.len()..]);
                std::fs::write(&path, new).unwrap();
            } else {
                panic!(
                    "docs/metering.md is out of date with the metering table; run KEYBRAKE_BLESS=1 cargo test -p keybrake-proxy the_docs_show_this_table"
                );
            }
        }
    }

    #[test]
    fn ids_fit_but_words_do_not_shadow() {
        assert!(fits(
            "/v1/payment_intents/{id}/confirm",
            "/v1/payment_intents/pi_1/confirm"
        ));
        assert!(!fits("/v1/payment_intents/{id}", "/v1/payment_intents"));
        assert!(fits(
            "/2010-04-01/Accounts/{id}/Messages/{id}.json",
            "/2010-04-01/Accounts/AC1/Messages/SM1.json"
        ));
        assert!(!fits(
            "/2010-04-01/Accounts/{id}/Messages/{id}.json",
            "/2010-04-01/Accounts/AC1/Messages/.json"
        ));
    }
}
