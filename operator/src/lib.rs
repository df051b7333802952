//! keybrake-operator: reconciles VaultKeys and SpendPolicies into scoped credentials.
//! (Built under issue 5; this crate is a compiling skeleton until then.)
#![forbid(unsafe_code)]
