//! A key reaches only what it made: another key's objects, the company's own charges, existing
//! customers and lists of the account are refused before anything reaches the vendor, unless
//! the SpendPolicy widens its `scope` on purpose. Against the sandbox upstream, which reads
//! requests as Stripe does and issues ids of Stripe's real shape.

use anyhow::Result;
use keybrake_e2e::{FORM, Reply, http, stack::Stack, upstream::RecordingUpstream};

/// A policy with `scope` (YAML under `spec.scope`, or empty) and three keys: `a` and `c` of run
/// `r1`, `b` of run `r2`; each may use every endpoint the tests call.
fn manifests(upstream: &str, scope: &str) -> String {
    let endpoints = [
        "POST /v1/payment_intents",
        "POST /v1/payment_intents/*/capture",
        "POST /v1/payment_intents/*/cancel",
        "POST /v1/refunds",
        "POST /v1/customers",
        "POST /v1/products",
        "GET /v1/customers",
        "GET /v1/customers/*",
        "GET /v1/payment_intents/*",
    ];
    let list: String = endpoints.iter().map(|e| format!("      - {e}\n")).collect();
    let key = |name: &str, run: &str| {
        format!(
            "---\napiVersion: keybrake.com/v1alpha1\nkind: VaultKey\nmetadata: {{name: {name}, namespace: billing}}\nspec:\n  policyRef: {{name: stripe}}\n  dailyUsdCap: 500\n  ttl: 1h\n  runLabel: {run}\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: stripe-credentials, namespace: billing}}\nstringData: {{apiKey: sk_test_scope}}\n---\napiVersion: keybrake.com/v1alpha1\nkind: SpendPolicy\nmetadata: {{name: stripe, namespace: billing}}\nspec:\n  vendor: stripe\n  credentialsSecretRef: {{name: stripe-credentials}}\n  upstream: {upstream}\n  limits:\n    maxDailyUsd: 5000\n    allowedEndpoints:\n{list}{scope}{}{}{}",
        key("a", "r1"),
        key("b", "r2"),
        key("c", "r1"),
    )
}

struct World {
    stack: Stack,
    proxy: keybrake_proxy::Running,
    upstream: RecordingUpstream,
}

impl World {
    async fn start(scope: &str) -> Result<World> {
        let upstream = RecordingUpstream::start().await?;
        let (stack, proxy) = Stack::start_with_proxy().await?;
        stack
            .cluster
            .apply_ok(&manifests(&upstream.url(), scope))
            .await?;
        Ok(World {
            stack,
            proxy,
            upstream,
        })
    }

    async fn bearer(&self, key: &str) -> Result<String> {
        let env = self.stack.active_key_env("billing", key).await?;
        Ok(format!("Bearer {}", env["STRIPE_API_KEY"]))
    }

    async fn call(&self, key: &str, method: &str, path: &str, body: &str) -> Result<Reply> {
        let bearer = self.bearer(key).await?;
        let mut headers = vec![("Authorization", bearer.as_str())];
        if method == "POST" {
            headers.push(FORM);
        }
        http(self.proxy.addr, method, path, &headers, body.as_bytes()).await
    }

    /// An object made at the vendor without the proxy (the company's own charge).
    async fn company_object(&self, path: &str, body: &str) -> Result<String> {
        let addr = self.upstream.url().trim_start_matches("http://").parse()?;
        let r = http(
            addr,
            "POST",
            path,
            &[FORM, ("Authorization", "Bearer sk_test_scope")],
            body.as_bytes(),
        )
        .await?;
        assert_eq!(r.status, 200, "{}", r.body);
        id(&r)
    }

    /// Asserts a refusal for `object`, and that the vendor saw nothing.
    async fn refused(&self, why: &str, r: Reply, object: &str) -> Result<()> {
        assert_eq!(r.status, 403, "{why}: {}", r.body);
        let body = r.json();
        assert_eq!(body["error"]["code"], "object_not_owned", "{why}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(object), "{why}: {message}");
        assert!(
            message.contains("spec.scope"),
            "{why}: the message says how to widen: {message}"
        );
        Ok(())
    }
}

fn id(r: &Reply) -> Result<String> {
    r.json()["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no id in {}", r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_acts_only_on_objects_it_created() -> Result<()> {
    let w = World::start("").await?;
    let mine = w
        .call(
            "a",
            "POST",
            "/v1/payment_intents",
            "amount=10000&currency=usd&payment_method=pm_card_visa&confirm=true&capture_method=manual",
        )
        .await?;
    assert_eq!(mine.status, 200, "{}", mine.body);
    let pi = id(&mine)?;
    assert!(
        keybrake_proxy::adapters::reach::stripe_id(&pi),
        "{pi} has Stripe's shape"
    );
    let company = w
        .company_object(
            "/v1/payment_intents",
            "amount=90000&currency=usd&confirm=true",
        )
        .await?;
    let customer = w
        .company_object("/v1/customers", "email=ceo@example.com")
        .await?;
    let seen = w.upstream.requests().len();

    // Another run's key: no capture, refund, cancel or read of a's PaymentIntent.
    let attempts = [
        (
            "POST",
            format!("/v1/payment_intents/{pi}/capture"),
            String::new(),
        ),
        (
            "POST",
            format!("/v1/payment_intents/{pi}/cancel"),
            String::new(),
        ),
        (
            "POST",
            "/v1/refunds".to_owned(),
            format!("payment_intent={pi}&amount=100"),
        ),
        ("GET", format!("/v1/payment_intents/{pi}"), String::new()),
    ];
    for (method, path, body) in &attempts {
        let r = w.call("b", method, path, body).await?;
        w.refused(&format!("b: {method} {path}"), r, &pi).await?;
    }
    // Nobody's key reaches the company's charge or its customers.
    let r = w
        .call(
            "a",
            "POST",
            "/v1/refunds",
            &format!("payment_intent={company}"),
        )
        .await?;
    w.refused("a refund of the company's charge", r, &company)
        .await?;
    let r = w
        .call("a", "GET", &format!("/v1/customers/{customer}"), "")
        .await?;
    w.refused("a read of the company's customer", r, &customer)
        .await?;
    let r = w
        .call(
            "a",
            "POST",
            "/v1/payment_intents",
            &format!("amount=100&currency=usd&customer={customer}&payment_method=pm_1SavedCard0&off_session=true&confirm=true"),
        )
        .await?;
    w.refused(
        "a charge of an existing customer's saved card",
        r,
        &customer,
    )
    .await?;
    assert_eq!(
        w.upstream.requests().len(),
        seen,
        "a refused call reached the vendor"
    );
    // A product created with the company charge's id as its own makes nobody its owner.
    let r = w
        .call("a", "POST", "/v1/products", &format!("name=x&id={company}"))
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        id(&r)?,
        company,
        "the sandbox takes the caller's id, as Stripe does"
    );
    let r = w
        .call(
            "a",
            "POST",
            "/v1/refunds",
            &format!("payment_intent={company}"),
        )
        .await?;
    w.refused("a refund after claiming the id", r, &company)
        .await?;
    let seen = w.upstream.requests().len();
    // Money sent to another account, linked objects pulled in: refused, named.
    for (method, path, body, parameter) in [
        (
            "POST",
            "/v1/payment_intents".to_owned(),
            "amount=100&currency=usd&transfer_data[destination]=acct_1Other",
            "transfer_data",
        ),
        (
            "POST",
            "/v1/payment_intents".to_owned(),
            "amount=100&currency=usd&on_behalf_of=acct_1Other",
            "on_behalf_of",
        ),
        (
            "POST",
            "/v1/payment_intents".to_owned(),
            "amount=100&currency=usd&application_fee_amount=90",
            "application_fee_amount",
        ),
        (
            "GET",
            format!("/v1/payment_intents/{pi}?expand[]=customer"),
            "",
            "expand",
        ),
    ] {
        let r = w.call("a", method, &path, body).await?;
        assert_eq!(r.status, 403, "{parameter}: {}", r.body);
        assert_eq!(
            r.json()["error"]["code"],
            "parameter_not_allowed",
            "{}",
            r.body
        );
        assert!(r.body.contains(parameter), "{}", r.body);
    }
    let r = w.call("a", "GET", "/v1/customers?limit=100", "").await?;
    assert_eq!(r.status, 403, "a list of every customer: {}", r.body);
    assert_eq!(r.json()["error"]["code"], "object_not_owned");
    assert_eq!(
        w.upstream.requests().len(),
        seen,
        "a refused call reached the vendor"
    );

    // Its own creator may, and what a call created is its creator's too: a's customer, and the
    // refund a's capture makes possible.
    let r = w
        .call(
            "a",
            "POST",
            &format!("/v1/payment_intents/{pi}/capture"),
            "",
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let cus = id(&w
        .call("a", "POST", "/v1/customers", "email=x@example.com")
        .await?)?;
    let r = w
        .call("a", "GET", &format!("/v1/customers/{cus}"), "")
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = w
        .call(
            "a",
            "POST",
            "/v1/refunds",
            &format!("payment_intent={pi}&amount=100"),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    // What b did not reach moved nothing: only a's capture and refund went through.
    let moved: Vec<String> = w.upstream.moved().iter().map(|m| m.what.clone()).collect();
    assert!(
        !moved.iter().any(|m| m.contains(&company)),
        "the company's charge was touched: {moved:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_widens_the_scope_only_where_it_says() -> Result<()> {
    let scope = "  scope:\n    objects: Run\n    customers: Any\n    existingObjects:\n      - POST /v1/refunds\n";
    let w = World::start(scope).await?;
    let pi = id(&w
        .call(
            "a",
            "POST",
            "/v1/payment_intents",
            "amount=5000&currency=usd&payment_method=pm_card_visa&confirm=true&capture_method=manual",
        )
        .await?)?;
    // Run r1: c may capture a's PaymentIntent; b (run r2) may not.
    let r = w
        .call(
            "b",
            "POST",
            &format!("/v1/payment_intents/{pi}/capture"),
            "",
        )
        .await?;
    w.refused("another run", r, &pi).await?;
    let r = w
        .call(
            "c",
            "POST",
            &format!("/v1/payment_intents/{pi}/capture"),
            "",
        )
        .await?;
    assert_eq!(r.status, 200, "same run: {}", r.body);
    // Existing customers may be charged (the seeds' billing run).
    let customer = w
        .company_object("/v1/customers", "email=ceo@example.com")
        .await?;
    let r = w
        .call(
            "b",
            "POST",
            "/v1/payment_intents",
            &format!("amount=100&currency=usd&customer={customer}&payment_method=pm_card_visa&confirm=true"),
        )
        .await?;
    assert_eq!(r.status, 200, "customers: Any: {}", r.body);
    // The refund worker's endpoint reaches the company's charge; capture does not.
    let company = w
        .company_object(
            "/v1/payment_intents",
            "amount=20000&currency=usd&confirm=true&capture_method=manual",
        )
        .await?;
    let r = w
        .call(
            "b",
            "POST",
            "/v1/refunds",
            &format!("payment_intent={company}&amount=100"),
        )
        .await?;
    assert_eq!(r.status, 200, "existingObjects: {}", r.body);
    let r = w
        .call(
            "b",
            "POST",
            &format!("/v1/payment_intents/{company}/capture"),
            "",
        )
        .await?;
    w.refused("capture is not widened", r, &company).await?;
    let r = w.call("b", "GET", "/v1/customers?limit=3", "").await?;
    assert_eq!(r.status, 403, "lists stay refused: {}", r.body);
    Ok(())
}

/// The shipped refund worker refunds a charge the company made, within its caps; the same
/// refund through the seeds' run key, and anything but a refund through the worker, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refund_worker_example_widens_refunds_only() -> Result<()> {
    use keybrake_e2e::{example, with_upstream};
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
    for manifest in [
        "stripe-policy.yaml",
        "stripe-refund-worker.yaml",
        "stripe-run-key.yaml",
    ] {
        stack
            .cluster
            .apply_ok(&with_upstream(&example(manifest), &upstream.url()))
            .await?;
    }
    let w = World {
        stack,
        proxy,
        upstream,
    };
    let company = w
        .company_object(
            "/v1/payment_intents",
            "amount=30000&currency=usd&confirm=true",
        )
        .await?;
    let refund = format!("payment_intent={company}&amount=20000");
    let r = w
        .call("billing-agent-run-7f3a", "POST", "/v1/refunds", &refund)
        .await?;
    assert_eq!(r.status, 403, "the run key: {}", r.body);
    let r = w
        .call("refund-worker", "POST", "/v1/refunds", &refund)
        .await?;
    assert_eq!(r.status, 200, "the refund worker: {}", r.body);
    let r = w
        .call("refund-worker", "POST", "/v1/refunds", &refund)
        .await?;
    assert_eq!(r.status, 200, "$400 of its $500 day: {}", r.body);
    let r = w
        .call("refund-worker", "POST", "/v1/refunds", &refund)
        .await?;
    assert_eq!(r.status, 429, "refunds count against the day: {}", r.body);
    let r = w
        .call(
            "refund-worker",
            "POST",
            &format!("/v1/payment_intents/{company}/capture"),
            "",
        )
        .await?;
    assert_eq!(r.status, 403, "nothing but refunds: {}", r.body);
    Ok(())
}
