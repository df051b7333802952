//! The `VaultKey` resource: one scoped, capped, expiring vendor credential.
// Repeated `printcolumn(type_ = ...)` arguments are separate columns, not duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    duration::KubeDuration, endpoint::EndpointPattern, money::Usd, status::SpendStatus,
    vendor::Vendor,
};

/// Label on VaultKeys created by the proxy's issuance API (`POST /vault/keys`).
pub const ISSUED_BY_LABEL: &str = "keybrake.com/issued-by";
/// Value of [`ISSUED_BY_LABEL`] on keys the issuance API created.
pub const ISSUED_BY_API: &str = "issuance-api";

/// One scoped credential: a dollar cap, an endpoint allowlist and an expiry, drawn on a
/// SpendPolicy and handed to workloads as a Secret.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "keybrake.com",
    version = "v1alpha1",
    kind = "VaultKey",
    namespaced,
    status = "VaultKeyStatus",
    shortname = "vk",
    category = "keybrake",
    doc = "VaultKey: a scoped, spend-capped, expiring vendor credential delivered as a Secret.",
    printcolumn(name = "Vendor", type_ = "string", json_path = ".status.vendor"),
    printcolumn(name = "Cap", type_ = "string", json_path = ".status.cap"),
    printcolumn(name = "Spent", type_ = "string", json_path = ".status.spend.totalUsd"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Today",
        type_ = "string",
        json_path = ".status.spend.todayUsd",
        priority = 1
    ),
    printcolumn(
        name = "Run",
        type_ = "string",
        json_path = ".spec.runLabel",
        priority = 1
    )
)]
#[x_kube(
    validation = Rule::new("has(self.dailyUsdCap) || has(self.totalUsdCap)").message("set dailyUsdCap or totalUsdCap (or both): a VaultKey without a daily or total cap could spend without limit"),
    validation = Rule::new("!(has(self.ttl) && has(self.expiresAt))").message("set ttl or expiresAt, not both"),
    validation = Rule::new("self.policyRef.name == oldSelf.policyRef.name").message("policyRef is immutable; create a new VaultKey to draw on another SpendPolicy"),
    validation = Rule::new("!has(oldSelf.revoked) || !oldSelf.revoked || (has(self.revoked) && self.revoked)").message("revoked is one-way: a revoked VaultKey stays revoked; create a new VaultKey"),
    validation = Rule::new("!has(self.restartDebounce) || !has(self.rotation) || duration(self.restartDebounce) < duration(self.rotation.overlap)").message("restartDebounce must be shorter than rotation.overlap: pods still on the previous token must be rolled before it stops working")
)]
#[serde(rename_all = "camelCase")]
pub struct VaultKeySpec {
    /// The SpendPolicy (same namespace) this key draws on: vendor, credentials, limits, prices.
    pub policy_ref: PolicyRef,
    /// Most this key may spend in one UTC day, in dollars (`"12.50"` or `500`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd_cap: Option<Usd>,
    /// Most this key may ever spend, in dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_usd_cap: Option<Usd>,
    /// Most a single call may cost, in dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_call_usd_cap: Option<Usd>,
    /// Endpoints this key may call, as `"METHOD /path"` with `*` for one path segment
    /// (`"GET /v1/customers/*"`). Defaults to the policy's list; may only narrow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub allowed_endpoints: Option<Vec<EndpointPattern>>,
    /// Lifetime from creation, like `90m` or `2h`. Defaults to the policy's `maxTtl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<KubeDuration>,
    /// Absolute expiry (RFC 3339). Mutually exclusive with `ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::names::RFC3339_PATTERN))]
    pub expires_at: Option<Time>,
    /// Free text tying calls to a workflow run (e.g. `hatchet/billing-agent/<run id>`); shown in
    /// the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub run_label: Option<String>,
    /// Set to true to revoke the key at once; it cannot be un-revoked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// Renew the credential periodically, keeping the old token valid for an overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
    /// Name of the Secret to write (default: the VaultKey's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::names::DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: Option<String>,
    /// Workloads (same namespace) that read the Secret as environment variables and must be
    /// rolled when the credential rotates. Each must opt in with the annotation
    /// `keybrake.com/restart-on-rotation` naming this VaultKey (or `*`); others are left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub restart_targets: Vec<RestartTarget>,
    /// How long to wait after a credential change before rolling the restart targets, like
    /// `30s`: every change within that window (a burst of rotations or reissues) causes one
    /// rollout. Default: roll at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_debounce: Option<KubeDuration>,
}

/// A reference to a SpendPolicy in the same namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRef {
    /// Name of the SpendPolicy.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Periodic renewal of the credential.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("duration(self.overlap) < duration(self.period)").message("rotation.overlap must be shorter than rotation.period"))]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// How often a new token is issued, like `24h`.
    pub period: KubeDuration,
    /// How long the previous token keeps working after the new one is issued, like `10m`.
    pub overlap: KubeDuration,
}

/// A workload, or the workloads a label selector chooses, to roll when the credential changes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.selector)").message("a restart target sets name (one workload) or selector (every workload of its kind with those labels), not both"))]
#[serde(rename_all = "camelCase")]
pub struct RestartTarget {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: WorkloadKind,
    /// Name of the workload in the VaultKey's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Every workload of `kind` in the VaultKey's namespace with these labels. Each must still
    /// opt in with the annotation `keybrake.com/restart-on-rotation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Kinds of workload that can be rolled.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

/// Lifecycle of a VaultKey.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum KeyPhase {
    /// Accepted, credential not issued yet (e.g. the policy is not ready).
    Pending,
    /// The credential works.
    Active,
    /// Past its expiry; the Secret is gone.
    Expired,
    /// Revoked; the Secret is gone.
    Revoked,
    /// A daily or total cap is spent; calls are refused until the day rolls over (daily) or
    /// for good (total).
    CapReached,
    /// The spec breaks a rule of its own or of its policy; no credential was issued.
    Invalid,
}

/// What the operator (lifecycle) and the proxy (spend) report about a VaultKey.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultKeyStatus {
    /// The generation the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the key is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<KeyPhase>,
    /// The vendor, from the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<Vendor>,
    /// The public id of the credential (also in the Secret as `KEYBRAKE_KEY_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The Secret holding the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The effective caps in words, e.g. `"500.00/day"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<String>,
    /// When the credential stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the current token was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,
    /// Rotation progress, when `spec.rotation` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationStatus>,
    /// Rollouts of the restart targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartStatus>,
    /// Spend counters (written by the proxy only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<SpendStatus>,
    /// `Ready` first, kstatus style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Rotation progress of a VaultKey.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// Tokens issued so far after the first.
    #[serde(default)]
    pub rotations: u32,
    /// When the next token will be issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<Time>,
    /// Until when the previous token keeps working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<Time>,
}

/// Rollouts of the restart targets after credential changes.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartStatus {
    /// Rollouts so far.
    #[serde(default)]
    pub rolls: u32,
    /// When the targets were last rolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rolled_at: Option<Time>,
    /// Since when a change waits for its rollout (`spec.restartDebounce`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<Time>,
    /// A digest of the Secret's contents the targets were last rolled for (or first given):
    /// contents that differ need a rollout, whatever write of the operator was interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_for: Option<String>,
}
