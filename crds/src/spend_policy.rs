//! The `SpendPolicy` resource: what a team may spend through one vendor account.
// Repeated `printcolumn(type_ = ...)` arguments are separate columns, not duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    duration::KubeDuration, endpoint::EndpointPattern, money::Usd, scope::Scope,
    status::SpendStatus, vendor::Vendor,
};

/// What a team may spend through one vendor account: the real credentials, the bounds every
/// VaultKey under it must respect, an aggregate budget, and the prices used to cost calls.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "keybrake.com",
    version = "v1alpha1",
    kind = "SpendPolicy",
    namespaced,
    status = "SpendPolicyStatus",
    shortname = "sp",
    category = "keybrake",
    doc = "SpendPolicy: the vendor account, limits, budget and prices that VaultKeys draw on.",
    printcolumn(name = "Vendor", type_ = "string", json_path = ".spec.vendor"),
    printcolumn(name = "Keys", type_ = "integer", json_path = ".status.keys"),
    printcolumn(name = "Budget", type_ = "string", json_path = ".status.budget"),
    printcolumn(name = "Spent", type_ = "string", json_path = ".status.spend.totalUsd"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.vendor == oldSelf.vendor").message("vendor is immutable; create a new SpendPolicy for another vendor"))]
#[serde(rename_all = "camelCase")]
pub struct SpendPolicySpec {
    /// The vendor this policy's credentials belong to: stripe, twilio or resend.
    pub vendor: Vendor,
    /// The Secret (same namespace) holding the real vendor credentials: `apiKey` for stripe and
    /// resend; `accountSid` and `authToken` for twilio. Only the proxy reads it.
    pub credentials_secret_ref: SecretRef,
    /// Base URL of the vendor API (default: the vendor's public API). Tests and sandboxes point
    /// it at a local stand-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(url, length(max = 2048))]
    pub upstream: Option<String>,
    /// Upper bounds every VaultKey under this policy must respect.
    #[serde(default)]
    pub limits: PolicyLimits,
    /// Aggregate caps across all VaultKeys of this policy, enforced atomically with theirs.
    #[serde(default)]
    pub budget: PolicyBudget,
    /// Prices used to cost calls whose price the request does not carry.
    #[serde(default)]
    pub pricing: Pricing,
    /// What keys may reach besides money: whose objects, which customers, which parameters.
    /// The default is the narrowest (see docs/security.md).
    #[serde(default)]
    pub scope: Scope,
}

/// A reference to a Secret in the same namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Upper bounds for the VaultKeys of a policy. A VaultKey may only narrow them.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyLimits {
    /// Largest daily cap a VaultKey may have; also the daily cap of a key that sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_daily_usd: Option<Usd>,
    /// Largest total cap a VaultKey may have; also the total cap of a key that sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_usd: Option<Usd>,
    /// Largest cost of a single call; also the per-call cap of a key that sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_call_usd: Option<Usd>,
    /// Longest lifetime of a VaultKey (e.g. `24h`); also the lifetime of a key that sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<KubeDuration>,
    /// Endpoints keys may call, as `"METHOD /path"` with `*` for one path segment. Keys default
    /// to this list and may only narrow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub allowed_endpoints: Option<Vec<EndpointPattern>>,
    /// Allows endpoints that administer the vendor account itself (Twilio `Keys`,
    /// `SigningKeys`, `IncomingPhoneNumbers`, `Accounts`; Resend `api-keys`, `domains`,
    /// `webhooks`; Stripe `accounts`, `webhook_endpoints`, ...) in `allowedEndpoints`. Off by
    /// default: a scoped key that can mint keys or buy numbers is no longer scoped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_account_administration: bool,
}

/// Aggregate caps across every VaultKey of a policy.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyBudget {
    /// Most the policy's keys together may spend in one UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<Usd>,
    /// Most the policy's keys together may ever spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_usd: Option<Usd>,
}

/// Prices and exchange rates. Nothing is priced in code; a call whose cost cannot be bounded
/// from the request is refused unless `worstCases` opts its endpoint in (see docs/metering.md).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    /// Price of one outbound SMS segment (Twilio), e.g. `"0.0083"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms_segment_usd: Option<Usd>,
    /// Price of one SMS segment by destination: the longest E.164 prefix that matches `To`
    /// wins over `smsSegmentUsd`, e.g. `"+1": "0.0083"`, `"+44": "0.0463"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 500))]
    pub sms_segment_usd_by_prefix: BTreeMap<String, Usd>,
    /// Refuses an SMS to a destination that no `smsSegmentUsdByPrefix` entry prices, instead of
    /// pricing it at `smsSegmentUsd`. On unless set to `false`: prices differ by country many
    /// times over. A `"+1"` price covers only US and Canadian area codes; the other countries and
    /// territories of the North American Numbering Plan need their own (`"+1876"`: Jamaica).
    // Absent means true, in serde, in the schema and in `Pricing::default()`. Always written,
    // so that the schema default of `pricing` (made from `Pricing::default()`) carries it too.
    #[serde(default = "destination_price_required")]
    #[schemars(extend("default" = true))]
    pub require_destination_price: bool,
    /// Price of one MMS message (Twilio), e.g. `"0.022"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mms_usd: Option<Usd>,
    /// Price of one email recipient (Resend), e.g. `"0.0009"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_usd: Option<Usd>,
    /// Explicit opt-in for endpoints whose cost the proxy cannot bound from the request
    /// (Twilio calls, Resend broadcasts, any endpoint docs/metering.md does not price): each
    /// call to a matching endpoint reserves this worst case. Without an entry they are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub worst_cases: Vec<WorstCase>,
    /// US dollars per one unit of each currency (lowercase ISO 4217 code), e.g. `eur: "1.08"`.
    /// `usd` is always 1. A charge in a currency without a rate is refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 200))]
    pub currency_usd_rates: BTreeMap<String, Usd>,
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing {
            sms_segment_usd: None,
            sms_segment_usd_by_prefix: BTreeMap::new(),
            require_destination_price: destination_price_required(),
            mms_usd: None,
            email_usd: None,
            worst_cases: Vec::new(),
            currency_usd_rates: BTreeMap::new(),
        }
    }
}

fn destination_price_required() -> bool {
    true
}

/// The worst case one call to an endpoint may cost, reserved before it is sent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorstCase {
    /// The endpoint, as in `allowedEndpoints` (`"POST /2010-04-01/Accounts/*/Calls.json"`).
    pub endpoint: EndpointPattern,
    /// What one call reserves and is charged when the vendor's answer does not say better.
    pub usd: Usd,
}

/// What the operator (keys, conditions) and the proxy (spend) report about a SpendPolicy.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpendPolicyStatus {
    /// The generation the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// VaultKeys that reference this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u32>,
    /// The aggregate budget in words, e.g. `"1000.00/day, 5000.00 total"`, or `"none"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// Aggregate spend of all keys (written by the proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<SpendStatus>,
    /// `Ready` first: credentials Secret present and well-formed, spec valid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
