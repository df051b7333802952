//! What a credential Secret holds: each SDK's own environment variables, so a pod uses it with
//! `envFrom` and changes no code but the base URL.

pub use keybrake_ledger::secret_env::{data, token_from};

/// Annotation: the key id of the token in the Secret.
pub const KEY_ID: &str = "keybrake.com/key-id";
/// Annotation: when the token in the Secret was issued (Unix ms).
pub const ISSUED_AT: &str = "keybrake.com/issued-at-ms";
/// Annotation: how many times the key has rotated.
pub const ROTATIONS: &str = "keybrake.com/rotations";
