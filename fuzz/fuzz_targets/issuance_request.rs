//! `POST /vault/keys` bodies: refused with a message, or a request with a vendor and a cap.
#![no_main]

use keybrake_proxy::issuance::IssueRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match IssueRequest::parse(data) {
        Ok(r) => assert!(r.daily_usd_cap.is_some() || r.total_usd_cap.is_some()),
        Err(e) => assert!(!e.message.is_empty()),
    }
});
