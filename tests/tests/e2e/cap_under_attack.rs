//! A caller who knows the vendors' APIs, with nothing but a vault key. Every attack runs against
//! the sandbox upstream, which reads requests the way the vendor does (Stripe and Twilio: query
//! string and form body as one bucket, last value wins) and counts what each call moved. For
//! every case: what the upstream moved is at most the cap and at most what was recorded, or
//! nothing was forwarded.

use anyhow::Result;
use keybrake_e2e::{
    FORM, http,
    refusals::refusal,
    stack::{Stack, eventually},
    upstream::{Mode, RecordingUpstream},
};
use keybrake_ledger::Token;
use serde_json::json;

/// A Stripe policy that allows every endpoint an attacker could want, and one key on it:
/// $500 a day, $400 a call.
fn stripe_manifests(upstream: &str) -> String {
    let endpoints = [
        "POST /v1/payment_intents",
        "POST /v1/payment_intents/*",
        "POST /v1/payment_intents/*/confirm",
        "POST /v1/payment_intents/*/capture",
        "POST /v1/payment_intents/*/increment_authorization",
        "POST /v1/refunds",
        "POST /v1/transfers",
        "POST /v1/customers",
        "POST /v1/subscriptions",
        "POST /v1/invoiceitems",
        "POST /v1/checkout/sessions",
        "GET /v1/customers/*",
        "GET /v1/payment_intents/*",
    ];
    let list: String = endpoints.iter().map(|e| format!("      - {e}\n")).collect();
    let key_list: String = endpoints.iter().map(|e| format!("    - {e}\n")).collect();
    let existing: String = endpoints
        .iter()
        .filter(|e| e.contains('*') || e.ends_with("/v1/refunds"))
        .map(|e| format!("      - {e}\n"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: stripe-credentials, namespace: billing}}
stringData: {{apiKey: sk_test_attacks}}
---
apiVersion: keybrake.com/v1alpha1
kind: SpendPolicy
metadata: {{name: stripe, namespace: billing}}
spec:
  vendor: stripe
  credentialsSecretRef: {{name: stripe-credentials}}
  upstream: {upstream}
  limits:
    maxDailyUsd: 5000
    maxPerCallUsd: 1000
    allowedEndpoints:
{list}  pricing:
    currencyUsdRates: {{eur: "1.08"}}
  # Widest scope: the cost of acting on objects no key created (a refund worker's) must
  # still hold the cap. object_scope.rs shows the default refuses them.
  scope:
    customers: Any
    existingObjects:
{existing}---
apiVersion: keybrake.com/v1alpha1
kind: VaultKey
metadata: {{name: attacker, namespace: billing}}
spec:
  policyRef: {{name: stripe}}
  dailyUsdCap: 500
  perCallUsdCap: 400
  ttl: 1h
  allowedEndpoints:
{key_list}"#
    )
}

struct Target {
    stack: Stack,
    proxy: keybrake_proxy::Running,
    upstream: RecordingUpstream,
    bearer: String,
    token: Token,
}

async fn stripe_target() -> Result<Target> {
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
    stack
        .cluster
        .apply_ok(&stripe_manifests(&upstream.url()))
        .await?;
    let env = stack.active_key_env("billing", "attacker").await?;
    let token = Token::parse_bearer(&env["STRIPE_API_KEY"])?;
    Ok(Target {
        stack,
        proxy,
        upstream,
        bearer: format!("Bearer {}", env["STRIPE_API_KEY"]),
        token,
    })
}

impl Target {
    async fn send(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &str,
    ) -> Result<keybrake_e2e::Reply> {
        let mut headers = vec![("Authorization", self.bearer.as_str())];
        headers.extend_from_slice(extra);
        http(self.proxy.addr, method, path, &headers, body.as_bytes()).await
    }

    async fn form(&self, path: &str, body: &str) -> Result<keybrake_e2e::Reply> {
        self.send("POST", path, &[FORM], body).await
    }

    /// What the sandbox says Stripe moved, in micro-dollars (USD only: anything else moved is
    /// a failure in itself, since the policy would have had to convert it).
    fn moved_micros(&self) -> u64 {
        self.upstream
            .moved()
            .iter()
            .map(|m| {
                assert_eq!(
                    m.unit, "usd",
                    "money moved in a currency the key never costed: {m:?}"
                );
                m.units * 10_000
            })
            .sum()
    }

    async fn recorded_micros(&self) -> Result<u64> {
        Ok(self
            .stack
            .ledger()
            .await?
            .key_spend(&self.token.key_id)
            .await?
            .total)
    }

    /// The promise, after every attack.
    async fn holds(&self, attack: &str) -> Result<()> {
        let (moved, recorded) = (self.moved_micros(), self.recorded_micros().await?);
        println!(
            "{attack:<70} moved ${:>8.2}  recorded ${:>8.2}",
            moved as f64 / 1e6,
            recorded as f64 / 1e6
        );
        assert!(
            moved <= 500_000_000,
            "{attack}: moved ${} past the $500 cap",
            moved as f64 / 1e6
        );
        assert!(
            moved <= recorded,
            "{attack}: moved {moved} but recorded {recorded}"
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_attacks_move_nothing_past_the_cap() -> Result<()> {
    let t = stripe_target().await?;

    // Parameters where the proxy does not look, or read two ways.
    let refused = vec![
        refusal(
            "the issue's attack: amount in the query string of a POST",
            "POST",
            "/v1/payment_intents?amount=99999999&currency=chf&confirm=true",
            vec![],
            "",
            400,
        ),
        refusal(
            "query and body together",
            "POST",
            "/v1/payment_intents?amount=99999999",
            vec![FORM],
            "amount=100&currency=usd&confirm=true",
            400,
        ),
        refusal(
            "the same name in two cases",
            "POST",
            "/v1/payment_intents",
            vec![FORM],
            "amount=100&Amount=9999999&currency=usd&confirm=true",
            400,
        ),
        refusal(
            "a name as a value and as a hash",
            "POST",
            "/v1/payment_intents",
            vec![FORM],
            "amount=100&amount[x]=9&currency=usd&confirm=true",
            400,
        ),
        refusal(
            "an invalid percent escape",
            "POST",
            "/v1/payment_intents",
            vec![FORM],
            "amount=1%0&currency=usd&confirm=true",
            400,
        ),
        refusal(
            "a JSON body to Stripe",
            "POST",
            "/v1/payment_intents",
            vec![("Content-Type", "application/json")],
            r#"{"amount":99999999,"currency":"usd","confirm":true}"#,
            400,
        ),
        refusal(
            "a form body without a content type",
            "POST",
            "/v1/payment_intents",
            vec![],
            "amount=99999999&currency=usd&confirm=true",
            400,
        ),
        refusal(
            "a gzip Content-Encoding",
            "POST",
            "/v1/payment_intents",
            vec![FORM, ("Content-Encoding", "gzip")],
            "amount=100&currency=usd&confirm=true",
            403,
        ),
        refusal(
            "Stripe-Account: a connected account",
            "POST",
            "/v1/payment_intents",
            vec![FORM, ("Stripe-Account", "acct_1Other")],
            "amount=100&currency=usd&confirm=true",
            403,
        ),
        refusal(
            "Stripe-Context: another account of the organization",
            "POST",
            "/v1/payment_intents",
            vec![FORM, ("Stripe-Context", "acct_1Other")],
            "amount=100&currency=usd&confirm=true",
            403,
        ),
        refusal(
            "a currency without a rate",
            "POST",
            "/v1/payment_intents",
            vec![FORM],
            "amount=100&currency=chf&confirm=true",
            400,
        ),
        refusal(
            "a $1,000,000 transfer",
            "POST",
            "/v1/transfers",
            vec![FORM],
            "amount=100000000&currency=usd&destination=acct_1",
            429,
        ),
        refusal(
            "a checkout session (no bound, no opt-in)",
            "POST",
            "/v1/checkout/sessions",
            vec![FORM],
            "mode=payment&line_items[0][price]=price_1&line_items[0][quantity]=1000",
            403,
        ),
        refusal(
            "a reserved word where * stands for an id",
            "GET",
            "/v1/customers/search?query=email%3A%27a%27",
            vec![],
            "",
            403,
        ),
        refusal(
            "a body on a GET",
            "GET",
            "/v1/customers/cus_1",
            vec![FORM],
            "expand[]=x",
            400,
        ),
    ];
    let before = t.upstream.requests().len();
    for row in &refused {
        let r = row
            .check(t.proxy.addr, &[("Authorization", t.bearer.as_str())])
            .await?;
        assert!(
            r.json()["error"]["message"].as_str().is_some(),
            "{}: Stripe's shape: {}",
            row.why,
            r.body
        );
        t.holds(row.why).await?;
    }
    assert_eq!(
        t.upstream.requests().len(),
        before,
        "a refused attack reached the vendor"
    );

    // A separator some parsers split on: forwarded as the proxy's own encoding (`;` escaped),
    // so the vendor reads exactly the amount that was costed.
    let r = t
        .form(
            "/v1/payment_intents",
            "metadata[x]=a;amount=9999999&amount=100&currency=usd&confirm=true",
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    t.holds("a ; inside a value").await?;
    assert_eq!(t.recorded_micros().await?, 1_000_000);

    // Unconfirmed PaymentIntents cost their amount at creation: they can be confirmed later,
    // client-side, without the proxy. Confirming through the key then costs nothing more.
    let pi = t
        .form("/v1/payment_intents", "amount=15000&currency=usd")
        .await?
        .json();
    assert_eq!(pi["status"], "requires_payment_method");
    let id = pi["id"].as_str().unwrap().to_owned();
    t.holds("an unconfirmed $150 PaymentIntent").await?;
    let r = t
        .form(&format!("/v1/payment_intents/{id}"), "amount=99999900")
        .await?;
    assert_eq!(
        r.status, 429,
        "raising its amount costs the rise: {}",
        r.body
    );
    let r = t
        .form(&format!("/v1/payment_intents/{id}/confirm"), "")
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    t.holds("confirming it").await?;
    assert_eq!(t.recorded_micros().await?, 151_000_000, "counted once");

    // Manual capture: authorised at $200, raised to $250 (costs $50), captured (costs nothing).
    let pi = t
        .form(
            "/v1/payment_intents",
            "amount=20000&currency=usd&confirm=true&capture_method=manual",
        )
        .await?
        .json();
    let id = pi["id"].as_str().unwrap().to_owned();
    let r = t
        .form(
            &format!("/v1/payment_intents/{id}/increment_authorization"),
            "amount=9999999",
        )
        .await?;
    assert_eq!(r.status, 429, "{}", r.body);
    let r = t
        .form(
            &format!("/v1/payment_intents/{id}/increment_authorization"),
            "amount=25000",
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = t
        .form(&format!("/v1/payment_intents/{id}/capture"), "")
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    t.holds("authorise, raise, capture").await?;
    assert_eq!(t.recorded_micros().await?, 401_000_000);

    // Objects made outside the proxy (or by another key) cost their full amount.
    let outside = t.upstream.seed("pi", json!({"amount": 900_000, "amount_capturable": 900_000, "currency": "usd", "status": "requires_capture", "capture_method": "manual"}));
    let r = t
        .form(&format!("/v1/payment_intents/{outside}/capture"), "")
        .await?;
    assert_eq!(r.status, 429, "capturing someone else's $9,000: {}", r.body);
    let paid = t.upstream.seed("pi", json!({"amount": 900_000, "amount_received": 900_000, "currency": "usd", "status": "succeeded"}));
    let r = t
        .form("/v1/refunds", &format!("payment_intent={paid}"))
        .await?;
    assert_eq!(r.status, 429, "refunding $9,000 counts: {}", r.body);
    let r = t
        .form("/v1/refunds", &format!("payment_intent={paid}&amount=50"))
        .await?;
    assert_eq!(r.status, 200, "a $0.50 refund fits: {}", r.body);
    let euros = t.upstream.seed(
        "pi",
        json!({"amount": 100, "currency": "chf", "status": "requires_payment_method"}),
    );
    let r = t
        .form(&format!("/v1/payment_intents/{euros}/confirm"), "")
        .await?;
    assert_eq!(
        r.status, 400,
        "an object in a currency without a rate: {}",
        r.body
    );
    t.holds("calls on objects made outside the proxy").await?;
    let old_version = [FORM, ("Stripe-Version", "2019-09-09")];
    let r = t
        .send(
            "POST",
            "/v1/customers",
            &old_version,
            "account_balance=9999999",
        )
        .await?;
    assert_eq!(
        r.status, 403,
        "an API version that still reads account_balance: {}",
        r.body
    );

    // A subscription costs its items, read first: $300 × 2 is over the per-call cap. A pending
    // invoice item is counted when it is created, and a subscription whose first invoice would
    // also charge it is refused.
    let customer = t
        .upstream
        .seed("cus", json!({"object": "customer", "balance": 0}));
    let price = t.upstream.seed("price", json!({"unit_amount": 30_000, "currency": "usd", "billing_scheme": "per_unit", "recurring": {"usage_type": "licensed", "interval": "month"}}));
    let t = &t;
    // The key lives an hour: a subscription ending within it is one period.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let within = now + 1800;
    let subscribe = |extra: String| {
        let body = format!("customer={customer}&items[0][price]={price}{extra}");
        async move { t.form("/v1/subscriptions", &body).await }
    };
    // Renewals after the key is gone: no cancel_at, or one past its expiry.
    let seen = t.upstream.requests().len();
    let r = subscribe(String::new()).await?;
    assert_eq!(r.status, 403, "a subscription without an end: {}", r.body);
    let r = subscribe(format!("&cancel_at={}", now + 30 * 86_400)).await?;
    assert_eq!(r.status, 403, "renewing past the key: {}", r.body);
    assert_eq!(
        r.json()["error"]["code"],
        "commitment_outlives_key",
        "{}",
        r.body
    );
    assert_eq!(
        t.upstream.requests().len(),
        seen,
        "nothing reached the vendor"
    );
    let subscribe = |extra: String| subscribe(format!("&cancel_at={within}{extra}"));
    let r = subscribe("&items[0][quantity]=2".into()).await?;
    assert_eq!(r.status, 429, "{}", r.body);
    let r = subscribe(format!("&add_invoice_items[0][price]={price}")).await?;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = subscribe("&currency=eur".into()).await?;
    assert_eq!(
        r.status, 403,
        "another currency than the price's: {}",
        r.body
    );
    let item = |amount: u64| format!("customer={customer}&amount={amount}&currency=usd");
    let r = t.form("/v1/invoiceitems", &item(9_999_999)).await?;
    assert_eq!(r.status, 429, "a $99,999.99 pending item: {}", r.body);
    let r = t.form("/v1/invoiceitems", &item(500)).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = subscribe(String::new()).await?;
    assert_eq!(
        r.status, 403,
        "the first invoice would charge the pending item too: {}",
        r.body
    );
    t.holds("subscriptions and invoice items").await?;
    assert_eq!(
        t.recorded_micros().await?,
        406_500_000,
        "the pending item is counted"
    );

    // The cap is spent ($406.50 + $93.50 = $500): only reads pass.
    let r = t
        .form(
            "/v1/payment_intents",
            "amount=9350&currency=usd&confirm=true",
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(t.recorded_micros().await?, 500_000_000);
    let r = t.form("/v1/customers", "email=a%40b.c").await?;
    assert_eq!(r.status, 429, "a $0 write with the cap spent: {}", r.body);
    assert_eq!(r.json()["error"]["code"], "cap_exhausted");
    let r = t.send("GET", "/v1/customers/cus_1", &[], "").await?;
    assert_ne!(r.status, 429, "a read still passes: {}", r.body);
    t.holds("the cap spent").await?;

    Ok(())
}

/// A caller that hangs up after sending cannot skip settle: the call runs to the end in a task
/// of its own and is counted by what the vendor says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_is_still_counted() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let t = stripe_target().await?;
    t.upstream
        .set_mode(Mode::Slow(std::time::Duration::from_millis(700)));
    let body = "amount=20000&currency=usd&confirm=true";
    let request = format!(
        "POST /v1/payment_intents HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        t.bearer,
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(t.proxy.addr).await?;
    s.write_all(request.as_bytes()).await?;
    eventually("the call to reach the vendor", 10, || async {
        (!t.upstream.requests().is_empty()).then_some(())
    })
    .await?;
    drop(s);
    let ledger = t.stack.ledger().await?;
    let tag = t.token.key_id.tag();
    let entry = eventually("the hung-up call to settle", 10, || async {
        let audit = ledger.audit(&tag, None, None, 10).await.ok()?;
        audit.into_iter().find(|e| e.outcome == "ok")
    })
    .await?;
    assert_eq!(entry.actual, 200_000_000, "{entry:?}");
    t.holds("a caller that hung up").await?;
    assert_eq!(t.recorded_micros().await?, 200_000_000);
    t.proxy.shutdown().await;
    Ok(())
}

/// Twilio and Resend: parameters and recipients where the proxy might not look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_and_resend_attacks_are_refused_or_counted_in_full() -> Result<()> {
    use keybrake_e2e::example;
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
    stack.apply_agents_policies(&upstream.url()).await?;
    for key in ["twilio-sms-key.yaml", "resend-email-key.yaml"] {
        stack.cluster.apply_ok(&example(key)).await?;
    }
    let sms = stack
        .active_key_env("agents", "haystack-notifier-run-41")
        .await?;
    let mail = stack
        .active_key_env("agents", "haystack-mailer-run-41")
        .await?;
    let basic = format!(
        "Basic {}",
        base64_encode(&format!(
            "{}:{}",
            sms["TWILIO_ACCOUNT_SID"], sms["TWILIO_AUTH_TOKEN"]
        ))
    );
    let messages = format!(
        "/2010-04-01/Accounts/{}/Messages.json",
        sms["TWILIO_ACCOUNT_SID"]
    );
    let long = "x".repeat(700);
    let twilio_refused = [
        (
            "To in the query string of a POST",
            format!("{messages}?Body={long}"),
            "To=%2B14155550100&Body=hi".to_owned(),
        ),
        (
            "a lower-case parameter name",
            messages.clone(),
            format!("To=%2B14155550100&Body=hi&body={long}"),
        ),
        (
            "Body twice in two cases",
            messages.clone(),
            format!("To=%2B14155550100&Body=hi&BODY={long}"),
        ),
        (
            "a content template of unknown length",
            messages.clone(),
            "To=%2B14155550100&ContentSid=HX0123456789abcdef0123456789abcdef".to_owned(),
        ),
        (
            "a WhatsApp destination",
            messages.clone(),
            "To=whatsapp%3A%2B14155550100&Body=hi".to_owned(),
        ),
    ];
    for (name, path, body) in &twilio_refused {
        let r = http(
            proxy.addr,
            "POST",
            path,
            &[("Authorization", basic.as_str()), FORM],
            body.as_bytes(),
        )
        .await?;
        assert!(
            matches!(r.status, 400 | 403),
            "{name}: {} {}",
            r.status,
            r.body
        );
        assert!(
            r.json()["code"].as_u64().is_some(),
            "{name}: Twilio's shape: {}",
            r.body
        );
    }
    assert!(
        upstream.requests().is_empty(),
        "a refused Twilio attack reached the vendor"
    );
    let r = http(
        proxy.addr,
        "POST",
        &messages,
        &[("Authorization", basic.as_str()), FORM],
        format!("To=%2B14155550100&Body={long}").as_bytes(),
    )
    .await?;
    assert_eq!(r.status, 201, "{}", r.body);

    let bearer = format!("Bearer {}", mail["RESEND_API_KEY"]);
    let json_ct = ("Content-Type", "application/json");
    for (name, body) in [
        (
            "To with a capital T",
            r#"{"from":"a@x.io","To":["b@y.io","c@y.io"],"to":"d@y.io","subject":"s"}"#,
        ),
        (
            "an undocumented recipients field",
            r#"{"from":"a@x.io","to":"d@y.io","recipients":["b@y.io"],"subject":"s"}"#,
        ),
        (
            "a duplicated to",
            r#"{"from":"a@x.io","to":"d@y.io","to":["a@y.io","b@y.io","c@y.io"],"subject":"s"}"#,
        ),
    ] {
        let r = http(
            proxy.addr,
            "POST",
            "/emails",
            &[("Authorization", bearer.as_str()), json_ct],
            body.as_bytes(),
        )
        .await?;
        assert_eq!(r.status, 400, "{name}: {}", r.body);
        assert_eq!(
            r.json()["name"],
            "validation_error",
            "{name}: Resend's shape: {}",
            r.body
        );
    }
    let r = http(
        proxy.addr,
        "POST",
        "/emails",
        &[("Authorization", bearer.as_str()), json_ct],
        br#"{"from":"a@x.io","to":"a@y.io, b@y.io, c@y.io","subject":"s","text":"t"}"#,
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);

    // What each vendor moved, priced by the policies, against what each key recorded.
    let ledger = stack.ledger().await?;
    let segments: u64 = upstream
        .moved()
        .iter()
        .filter(|m| m.vendor == "twilio")
        .map(|m| m.units)
        .sum();
    let recipients: u64 = upstream
        .moved()
        .iter()
        .filter(|m| m.vendor == "resend")
        .map(|m| m.units)
        .sum();
    assert_eq!((segments, recipients), (5, 3), "{:?}", upstream.moved());
    let sms_key = Token::parse_twilio(&sms["TWILIO_ACCOUNT_SID"], &sms["TWILIO_AUTH_TOKEN"])?;
    let mail_key = Token::parse_bearer(&mail["RESEND_API_KEY"])?;
    assert_eq!(
        ledger.key_spend(&sms_key.key_id).await?.total,
        5 * 11_300,
        "5 segments at $0.0113"
    );
    assert_eq!(
        ledger.key_spend(&mail_key.key_id).await?.total,
        3 * 900,
        "3 recipients at $0.0009"
    );
    proxy.shutdown().await;
    Ok(())
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Two calls on one PaymentIntent fired together are not both costed against its old state: the
/// second waits for the first (409 `object_busy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_updates_of_one_payment_intent_are_never_costed_together() -> Result<()> {
    let t = stripe_target().await?;
    let pi = t
        .form("/v1/payment_intents", "amount=1000&currency=usd")
        .await?
        .json();
    let id = pi["id"].as_str().unwrap_or_default().to_owned();
    t.upstream
        .set_mode(Mode::Slow(std::time::Duration::from_millis(400)));
    let path = format!("/v1/payment_intents/{id}");
    let (a, b) = tokio::join!(t.form(&path, "amount=2000"), t.form(&path, "currency=eur"));
    let mut statuses = [a?.status, b?.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "one update at a time");
    t.upstream.set_mode(Mode::Normal);
    t.holds("two updates fired together").await?;
    t.proxy.shutdown().await;
    Ok(())
}
