//! SpendPolicy reconcile: validate the spec and the credentials Secret, write the policy record
//! (aggregate budget) to Redis, and report keys and budget in status. A missing or malformed
//! credentials Secret is a condition with a clear message, never a crash loop.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use keybrake_crds::{
    Listed, SpendPolicy, SpendPolicyStatus, Unreadable,
    credentials::Credentials,
    status::{RECONCILING, STALLED, conditions},
    validate::validate_policy,
};
use keybrake_ledger::{PolicyRecord, PolicyTag};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::{instrument, warn};

use crate::{
    clock,
    context::{Context, MANAGER},
    error::{Error, Result},
};

/// Why the policy is (not) ready.
fn check_credentials(
    policy: &SpendPolicy,
    secret: Option<&Secret>,
) -> Result<(), (&'static str, String)> {
    let ns = policy.namespace().unwrap_or_default();
    let name = &policy.spec.credentials_secret_ref.name;
    let Some(secret) = secret else {
        return Err((
            "CredentialsNotFound",
            format!(
                "Secret {ns}/{name} not found; create it with the key(s) {}",
                policy.spec.vendor.credential_keys().join(" and ")
            ),
        ));
    };
    let data = secret.data.clone().unwrap_or_default();
    Credentials::from_secret_data(policy.spec.vendor, &data)
        .map(|_| ())
        .map_err(|why| ("CredentialsMalformed", format!("Secret {ns}/{name} {why}")))
}

fn budget_summary(policy: &SpendPolicy) -> String {
    let b = &policy.spec.budget;
    let parts: Vec<String> = [
        b.daily_usd.map(|d| format!("{d}/day")),
        b.total_usd.map(|t| format!("{t} total")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The reconcile entry point for the controller.
#[instrument(skip_all, fields(spendpolicy = %listed.name_any(), namespace = listed.namespace().unwrap_or_default()))]
pub async fn reconcile(listed: Arc<Listed<SpendPolicy>>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciled("spendpolicy");
    // Parsed here, not at the watch: a policy our types cannot read is refused alone.
    let policy = match listed.parse() {
        Ok(policy) => policy,
        Err(why) => return unreadable(&listed, &why, &ctx).await,
    };
    if let Some(uid) = policy.uid() {
        ctx.metrics.unreadable("spendpolicy", &uid, false);
    }
    let result = reconcile_policy(&policy, &ctx).await;
    if let Err(e) = &result
        && let Some(cause) = e.redis_cause()
    {
        redis_failed(&policy, &ctx, cause).await;
    }
    result
}

/// A SpendPolicy the API server stores but our types cannot read: `Ready=False` and
/// `Stalled=True` with the field and the parser's words, and a Warning Event once. Its keys are
/// held (Pending, the policy named as the cause) and the proxy refuses their calls.
async fn unreadable(
    listed: &Listed<SpendPolicy>,
    why: &Unreadable,
    ctx: &Context,
) -> Result<Action> {
    let uid = listed.uid().unwrap_or_default();
    warn!(spendpolicy = %listed.name_any(), error = %why, "unreadable SpendPolicy");
    ctx.metrics.unreadable("spendpolicy", &uid, true);
    let message = format!(
        "{why}; the operator cannot read this SpendPolicy, so its keys are held and the proxy refuses their calls: fix the field"
    );
    crate::unreadable::report(listed, ctx, &message, Default::default()).await?;
    Ok(Action::await_change())
}

/// Says on the policy that Redis stopped the reconcile (`Ready=False`); best effort.
async fn redis_failed(policy: &SpendPolicy, ctx: &Context, cause: &keybrake_ledger::LedgerError) {
    let ns = policy.namespace().unwrap_or_default();
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut want = policy.status.clone().unwrap_or_default();
    want.spend = None;
    let message = format!(
        "the operator cannot reach Redis ({cause}); the policy's budget record could not be written, and its keys' calls are refused until it can"
    );
    want.conditions = conditions(
        false,
        Some(RECONCILING),
        "RedisUnavailable",
        &message,
        policy.metadata.generation,
        &previous,
        clock::time(clock::local_ms()),
    );
    let api: Api<SpendPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let patch =
        json!({"apiVersion": "keybrake.com/v1alpha1", "kind": "SpendPolicy", "status": want});
    if let Err(e) = ctx
        .timed(
            "patch status",
            api.patch_status(
                &policy.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(patch),
            ),
        )
        .await
    {
        warn!(error = %e, "could not report the Redis failure on the SpendPolicy");
    }
}

/// One policy's reconcile: its credentials, its record and slot in Redis, its key count and
/// status. Long but linear; the VaultKey reconcile is the one split into plan and executor.
async fn reconcile_policy(policy: &SpendPolicy, ctx: &Context) -> Result<Action> {
    let ns = policy
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = policy.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = ctx
        .timed(
            "get credentials",
            secrets.get_opt(&policy.spec.credentials_secret_ref.name),
        )
        .await?;
    let tag = PolicyTag::of(&ns, &name);
    let taken_by = ctx.ledger.claim_tag(&tag, &format!("{ns}/{name}")).await?;
    let verdict = match (validate_policy(&policy.spec), taken_by) {
        (_, Some(other)) => Err((
            "SlotTaken",
            format!(
                "the Redis slot of this policy ({tag}, a hash of its namespace and name) already belongs to SpendPolicy {other}; give this policy another name"
            ),
        )),
        (Err(v), None) => Err((v.reason().as_str(), format!("{v}"))),
        (Ok(()), None) => check_credentials(policy, secret.as_ref()),
    };

    // A slot that belongs to another policy is not written.
    if !matches!(verdict, Err(("SlotTaken", _))) {
        ctx.ledger
            .write_policy(
                &tag,
                &PolicyRecord {
                    daily_budget: policy.spec.budget.daily_usd,
                    total_budget: policy.spec.budget.total_usd,
                },
            )
            .await?;
    }

    let count = ctx.counts.count(&ns, &name);

    let (now_ms, _) = ctx.ledger.now().await?;
    let now = clock::time(now_ms);
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let (ok, reason, message) = match &verdict {
        Ok(()) => (
            true,
            "Ready",
            format!(
                "credentials in Secret {ns}/{} are usable",
                policy.spec.credentials_secret_ref.name
            ),
        ),
        Err((r, m)) => (false, *r, m.clone()),
    };
    let want = SpendPolicyStatus {
        observed_generation: policy.metadata.generation,
        keys: Some(count),
        budget: Some(budget_summary(policy)),
        spend: None,
        // kstatus: a policy that is not Ready stays so until it or its Secret changes.
        conditions: conditions(
            ok,
            (!ok).then_some(STALLED),
            reason,
            &message,
            policy.metadata.generation,
            &previous,
            now,
        ),
    };
    let mut have = policy.status.clone().unwrap_or_default();
    have.spend = None;
    if have != want {
        let api: Api<SpendPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        let patch =
            json!({"apiVersion": "keybrake.com/v1alpha1", "kind": "SpendPolicy", "status": want});
        let written = ctx
            .timed(
                "patch status",
                api.patch_status(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(patch),
                ),
            )
            .await?;
        ctx.own_writes.record(&written.metadata);
    }
    // Key counts come from the VaultKey watch, told once a second; the credentials from a read
    // of the Secret. A periodic re-check keeps both eventually right.
    Ok(Action::requeue(Duration::from_secs(15)))
}

/// Failed reconciles are logged, counted and retried after a short, bounded delay.
pub fn error_policy(policy: Arc<Listed<SpendPolicy>>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(spendpolicy = %policy.name_any(), error = %err, "reconcile failed");
    ctx.metrics.failed("spendpolicy", err.label());
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {

    use super::*;

    fn policy(vendor: &str) -> SpendPolicy {
        let vendor: keybrake_crds::Vendor = vendor.parse().unwrap();
        SpendPolicy::test("ns", "p", vendor)
            .credentials("creds")
            .budget_daily("100")
            .build()
    }

    use keybrake_crds::testing::secret;

    #[test]
    fn credentials_are_checked_per_vendor() {
        assert_eq!(
            check_credentials(&policy("stripe"), None).unwrap_err().0,
            "CredentialsNotFound"
        );
        let e = check_credentials(&policy("twilio"), Some(&secret(&[("accountSid", "AC1")])))
            .unwrap_err();
        assert_eq!(e.0, "CredentialsMalformed");
        assert!(e.1.contains("has no key \"authToken\""), "{}", e.1);
        assert!(
            check_credentials(&policy("stripe"), Some(&secret(&[("apiKey", "  ")])))
                .unwrap_err()
                .1
                .contains("empty")
        );
        assert!(
            check_credentials(&policy("stripe"), Some(&secret(&[("apiKey", "sk_test_x")]))).is_ok()
        );
        assert_eq!(budget_summary(&policy("stripe")), "100.00/day");
    }
}
