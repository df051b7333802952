//! Kubeconfig files for the control plane: its URL, its CA, and a bearer token.

use base64::Engine;

/// A kubeconfig with one cluster, one user presenting `token`, and one current context.
pub fn kubeconfig_yaml(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keybrake\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: keybrake\n  user:\n    token: {token}\ncontexts:\n- name: keybrake\n  context:\n    cluster: keybrake\n    user: keybrake\ncurrent-context: keybrake\n"
    )
}
