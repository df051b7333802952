//! Kubernetes object names and references, as the API server checks them. A module of its
//! own: the CRD types (for their schema patterns) and the validation both use it.

/// DNS-1123 subdomain, the rule for Secret and most object names.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// An RFC 3339 time as the CRD schema admits it, tighter than the API server's own `date-time`
/// check (which lets through offsets like `+99:00` and text after the seconds): every time it
/// admits, the binaries read (`agreement.rs`).
pub const RFC3339_PATTERN: &str = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";

/// Whether `name` is a DNS-1123 label (namespace names).
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_dns_subdomain(name)
}

/// Whether `name` is a DNS-1123 subdomain (the rule for Secret names).
pub fn is_dns_subdomain(name: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label_ok)
}

/// A `namespace/name` reference to one object (a Secret the deployables follow): both parts
/// must be present and valid, so a value can never mean "every namespace" to the API.
pub fn namespaced_name(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((ns, name)) if is_dns_label(ns) && is_dns_subdomain(name) => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!(
            "{text:?} is not namespace/name (a namespace and an object name, both required)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_names_need_both_parts() {
        assert_eq!(
            namespaced_name("keybrake-system/keybrake-proxy-tls").unwrap(),
            ("keybrake-system".into(), "keybrake-proxy-tls".into())
        );
        for bad in ["keybrake-proxy-tls", "/x", "x/", "a/b/c", "A/b", ""] {
            assert!(namespaced_name(bad).is_err(), "{bad}");
        }
    }
}
