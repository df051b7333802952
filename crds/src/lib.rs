//! Keybrake's Kubernetes resources, `VaultKey` and `SpendPolicy` (`keybrake.com/v1alpha1`), and
//! the plain validation rules the operator and the proxy share.
#![forbid(unsafe_code)]

pub mod administration;
#[cfg(test)]
mod agreement;
pub mod compat;
pub mod credentials;
pub mod duration;
pub mod endpoint;
pub mod events;
pub mod listed;
pub mod manifests;
pub mod money;
pub mod names;
pub mod scope;
pub mod spend_policy;
pub mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;
pub mod vault_key;
pub mod vendor;

pub use duration::KubeDuration;
pub use endpoint::EndpointPattern;
pub use listed::{Listed, Unreadable};
pub use money::Usd;
pub use spend_policy::{SpendPolicy, SpendPolicySpec, SpendPolicyStatus};
pub use vault_key::{KeyPhase, VaultKey, VaultKeySpec, VaultKeyStatus};
pub use vendor::Vendor;

/// The API group of both resources.
pub const GROUP: &str = "keybrake.com";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
