//! The SpendPolicies the proxy serves, with their real vendor credentials, indexed by policy
//! tag (which every vault token carries). Credentials are read from the Secrets the policies
//! name, kept in memory only, and refreshed when those Secrets change; other Secrets (the scoped
//! ones the operator writes, say) are watched by metadata only and never read.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
pub use keybrake_crds::credentials::Credentials;
use keybrake_crds::{
    Listed, SpendPolicy, Vendor, spend_policy::Pricing, validate::validate_policy,
};
use keybrake_ledger::PolicyTag;
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, reflector, watcher},
};

/// Everything the data path needs of one policy.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// The SpendPolicy's namespace.
    pub namespace: String,
    /// The SpendPolicy's name.
    pub name: String,
    /// The vendor whose real secret it holds.
    pub vendor: Vendor,
    /// Upstream base URL, without a trailing slash.
    pub upstream: String,
    /// The real credentials.
    pub credentials: Credentials,
    /// Prices and rates.
    pub pricing: Pricing,
    /// Whose objects, which customers and which parameters its keys may reach.
    pub scope: keybrake_crds::scope::Scope,
}

/// A policy as the proxy sees it.
#[derive(Debug, Clone)]
pub enum PolicyState {
    /// Loaded, with its credentials: calls may be forwarded.
    Ready(Arc<PolicyConfig>),
    /// Present but unusable, with the reason (missing Secret, invalid spec).
    Unusable(String),
}

/// The table of policies.
#[derive(Default)]
pub struct Policies {
    map: RwLock<HashMap<PolicyTag, PolicyState>>,
    synced: AtomicBool,
}

impl Policies {
    /// The policy of a tag.
    pub fn get(&self, tag: &PolicyTag) -> Option<PolicyState> {
        self.table().get(tag).cloned()
    }

    /// The table. A writer that panicked leaves it whole (it is replaced in one assignment or
    /// changed by one insert), so a poisoned lock is read through, never taken for "no policy".
    fn table(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PolicyTag, PolicyState>> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<PolicyTag, PolicyState>> {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the first full load has happened (readiness).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Adds one policy found before the watch delivered it.
    pub fn insert(&self, tag: PolicyTag, state: PolicyState) {
        self.table_mut().insert(tag, state);
    }

    /// Replaces the whole table.
    pub fn replace(&self, table: HashMap<PolicyTag, PolicyState>) {
        *self.table_mut() = table;
        self.synced.store(true, Ordering::Release);
    }
}

/// The state of one policy given its credentials Secret (if found).
pub fn state_of(
    policy: &SpendPolicy,
    secret: Option<&Secret>,
    default_upstream: &dyn Fn(Vendor) -> String,
) -> PolicyState {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    if let Err(v) = validate_policy(&policy.spec) {
        return PolicyState::Unusable(format!("SpendPolicy {ns}/{name} is invalid: {v}"));
    }
    let secret_name = &policy.spec.credentials_secret_ref.name;
    let Some(secret) = secret else {
        return PolicyState::Unusable(format!(
            "SpendPolicy {ns}/{name}: credentials Secret {ns}/{secret_name} not found"
        ));
    };
    let data = secret.data.clone().unwrap_or_default();
    let credentials = match Credentials::from_secret_data(policy.spec.vendor, &data) {
        Ok(c) => c,
        Err(why) => {
            return PolicyState::Unusable(format!(
                "SpendPolicy {ns}/{name}: Secret {ns}/{secret_name} {why}"
            ));
        }
    };
    let upstream = policy
        .spec
        .upstream
        .clone()
        .unwrap_or_else(|| default_upstream(policy.spec.vendor));
    PolicyState::Ready(Arc::new(PolicyConfig {
        namespace: ns,
        name,
        vendor: policy.spec.vendor,
        upstream: upstream.trim_end_matches('/').to_owned(),
        credentials,
        pricing: policy.spec.pricing.clone(),
        scope: policy.spec.scope.clone(),
    }))
}

/// The state of a policy the API server stores and our types cannot read: every call of its
/// keys is refused, naming the field.
fn unreadable(ns: &str, name: &str, why: &keybrake_crds::Unreadable) -> PolicyState {
    PolicyState::Unusable(format!("SpendPolicy {ns}/{name} cannot be read: {why}"))
}

/// Reads the Secret a policy names (`None` when it does not exist); an error or a timeout says
/// nothing about the Secret and is returned as such.
async fn credentials_secret(
    client: &Client,
    policy: &SpendPolicy,
    timeout: Duration,
) -> Result<Option<Secret>, String> {
    let ns = policy.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    match tokio::time::timeout(
        timeout,
        secrets.get_opt(&policy.spec.credentials_secret_ref.name),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Loads the policy of a key whose policy tag is not in the table: the key record in Redis names
/// it, and it is read straight from the API server. A policy created a moment before its first
/// key may not have reached the watch yet; without this, that key's first calls would be
/// refused as unknown. Keys without a record cost one Redis read and nothing else.
pub async fn load_missing(
    policies: &Policies,
    client: &Client,
    ledger: &keybrake_ledger::Ledger<keybrake_ledger::connection::Connection>,
    config: &crate::config::Config,
    key: &keybrake_ledger::KeyId,
) -> Option<PolicyState> {
    let record = ledger.key_record(key).await.ok()??;
    let (ns, name) = record.policy.split_once('/')?;
    load_named(policies, client, config, ns, name).await
}

/// Loads one policy straight from the API server into the table (the watch may trail it).
pub async fn load_named(
    policies: &Policies,
    client: &Client,
    config: &crate::config::Config,
    ns: &str,
    name: &str,
) -> Option<PolicyState> {
    let timeout = Duration::from_secs(2);
    let listed = tokio::time::timeout(
        timeout,
        Api::<Listed<SpendPolicy>>::namespaced(client.clone(), ns).get_opt(name),
    )
    .await
    .ok()?
    .ok()??;
    let policy = match listed.parse() {
        Ok(p) => p,
        Err(why) => {
            let state = unreadable(ns, name, &why);
            policies.insert(PolicyTag::of(ns, name), state.clone());
            return Some(state);
        }
    };
    let secret = credentials_secret(client, &policy, timeout).await.ok()?;
    let state = state_of(&policy, secret.as_ref(), &|v| config.default_upstream(v));
    tracing::info!(policy = %format!("{ns}/{name}"), "loaded a policy ahead of the watch");
    policies.insert(PolicyTag::of(ns, name), state.clone());
    Some(state)
}

/// Rebuilds the table from the policies, fetching each credentials Secret by name.
async fn refresh(
    policies: &Policies,
    store: &reflector::Store<Listed<SpendPolicy>>,
    client: &Client,
    timeout: Duration,
    defaults: &crate::config::Config,
) {
    let mut table = HashMap::new();
    for listed in store.state() {
        let ns = listed.namespace().unwrap_or_default();
        let tag = PolicyTag::of(&ns, &listed.name_any());
        let policy = match listed.parse() {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(error = %why, policy = %listed.name_any(), "unreadable SpendPolicy: its keys' calls are refused");
                table.insert(tag, unreadable(&ns, &listed.name_any(), &why));
                continue;
            }
        };
        let secret = match credentials_secret(client, &policy, timeout).await {
            Ok(s) => s,
            Err(why) => {
                // An API server hiccup says nothing about the Secret: keep what was known rather
                // than refuse every call of the policy until the next reload.
                if let Some(known) = policies.get(&tag) {
                    tracing::warn!(error = %why, policy = %policy.name_any(), "could not read a credentials Secret; keeping the last one");
                    table.insert(tag, known);
                    continue;
                }
                tracing::warn!(error = %why, policy = %policy.name_any(), "could not read a credentials Secret");
                None
            }
        };
        let default_upstream = |v: Vendor| defaults.default_upstream(v);
        table.insert(tag, state_of(&policy, secret.as_ref(), &default_upstream));
    }
    policies.replace(table);
}

/// Keeps the table current until the task is dropped: reloads on any SpendPolicy change and
/// on changes to a Secret some policy names.
pub async fn watch(
    client: Client,
    policies: Arc<Policies>,
    timeout: Duration,
    config: crate::config::Config,
) {
    // Listed as stored and parsed in `refresh`: a policy our types cannot read is refused
    // alone, and the watch goes on seeing the others.
    let (store, writer) = reflector::store::<Listed<SpendPolicy>>();
    let policy_events = reflector(
        writer,
        watcher(
            Api::<Listed<SpendPolicy>>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|_| true);
    let referenced = store.clone();
    // Metadata only: the data of Secrets no policy names is never fetched.
    let secret_events = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(move |event| {
        let Ok(event) = event else { return false };
        let (watcher::Event::Apply(obj)
        | watcher::Event::Delete(obj)
        | watcher::Event::InitApply(obj)) = &event
        else {
            return false;
        };
        let (ns, name) = (obj.namespace(), obj.name_any());
        referenced.state().iter().any(|p| {
            p.namespace() == ns && p.spec_str(&["credentialsSecretRef", "name"]) == Some(&name)
        })
    });
    let events = futures::stream::select(policy_events, secret_events);
    tokio::pin!(events);
    while let Some(mut relevant) = events.next().await {
        // Coalesce a burst (the initial listing, say) into one reload.
        while let Some(Some(more)) = events.next().now_or_never() {
            relevant |= more;
        }
        // The store fills as this very stream is polled: ask whether it is ready, never wait.
        let ready = matches!(store.wait_until_ready().now_or_never(), Some(Ok(())));
        if relevant && ready {
            refresh(&policies, &store, &client, timeout, &config).await;
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn policy(vendor: &str) -> SpendPolicy {
        let vendor: keybrake_crds::Vendor = vendor.parse().unwrap();
        SpendPolicy::test("ns", "p", vendor)
            .credentials("creds")
            .upstream("http://127.0.0.1:9/")
            .build()
    }

    use keybrake_crds::testing::secret;

    #[test]
    fn reads_credentials_per_vendor_and_never_prints_them() {
        let PolicyState::Ready(cfg) = state_of(
            &policy("stripe"),
            Some(&secret(&[("apiKey", "sk_test_abc\n")])),
            &|v| v.default_upstream().to_owned(),
        ) else {
            panic!()
        };
        assert_eq!(cfg.credentials, Credentials::ApiKey("sk_test_abc".into()));
        assert_eq!(cfg.upstream, "http://127.0.0.1:9");
        assert!(!format!("{cfg:?}").contains("sk_test_abc"));
        assert!(
            matches!(state_of(&policy("twilio"), Some(&secret(&[("accountSid", "AC1")])), &|v| v.default_upstream().to_owned()), PolicyState::Unusable(m) if m.contains("authToken"))
        );
        assert!(
            matches!(state_of(&policy("resend"), None, &|v| v.default_upstream().to_owned()), PolicyState::Unusable(m) if m.contains("not found"))
        );
    }
}
