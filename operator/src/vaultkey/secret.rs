//! What a credential Secret holds: each SDK's own environment variables, so a pod uses it with
//! `envFrom` and changes no code but the base URL.

pub use keybrake_ledger::secret_env::{data_with_ca, token_from};

/// Annotation: the key id of the token in the Secret.
pub const KEY_ID: &str = "keybrake.com/key-id";
/// Annotation: when the token in the Secret was issued (Unix ms).
pub const ISSUED_AT: &str = "keybrake.com/issued-at-ms";
/// Annotation: how many times the key has rotated.
pub const ROTATIONS: &str = "keybrake.com/rotations";
/// Label and annotation: the VaultKey the Secret belongs to (`kubectl get secret -l ...`).
pub const VAULT_KEY: &str = "keybrake.com/vault-key";

/// The longest label value a real API server accepts.
const LABEL_VALUE_MAX: usize = 63;

/// The VaultKey's name as a label value, when it fits one: VaultKey names may be up to 253
/// characters, label values only 63 (a real server refuses the Secret otherwise). The full name
/// is always in the annotation of the same name.
pub fn vault_key_label(name: &str) -> Option<String> {
    (name.len() <= LABEL_VALUE_MAX).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_vault_key_names_are_not_labels() {
        assert_eq!(vault_key_label("run-7f3a").as_deref(), Some("run-7f3a"));
        assert_eq!(vault_key_label(&"a".repeat(63)).map(|v| v.len()), Some(63));
        assert_eq!(vault_key_label(&"a".repeat(64)), None);
    }
}
