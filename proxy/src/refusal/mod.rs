//! Everything the proxy can refuse, as one type. Each refusal carries its data; its code, the
//! rule that refused (for the `X-Keybrake-Rule` header and metrics), its status class and its
//! message are derived in `catalog.rs`, and [`render`] shapes it as the vendor's own error, so each
//! official SDK raises its own exception type: a cap hit is a 429 rate-limit error with code
//! `cap_exhausted` (never 409 or 5xx, which the SDKs retry); revoked, expired and unknown keys
//! are 401; a disallowed endpoint is 403. Every message says which rule refused and how to act
//! on it. `docs/metering.md`'s table of refusals is checked against this type.

mod catalog;
mod ledger;
mod render;

pub use catalog::{Accounting, CapHit, Kind, Refusal};
pub use ledger::from_ledger;
pub use render::render;

#[cfg(test)]
mod tests;
