//! keybrake-proxy: the metered data path to Stripe, Twilio and Resend.
//! (Built under issue 6; this crate is a compiling skeleton until then.)
#![forbid(unsafe_code)]
