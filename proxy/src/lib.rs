//! keybrake-proxy: the metered data path to Stripe, Twilio and Resend. Vendor adapters cost each
//! call before it is sent and after it returns; the ledger's Redis scripts admit and settle it.
#![forbid(unsafe_code)]

pub mod auth;
pub mod path;
pub mod refusal;
pub mod vendor;
