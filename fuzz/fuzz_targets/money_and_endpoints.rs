//! The money parser and the endpoint allowlist matcher: whatever parses prints back to itself,
//! and matching never panics.
#![no_main]

use keybrake_crds::{EndpointPattern, Usd, endpoint::any_matches};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(usd) = text.parse::<Usd>() {
        assert_eq!(usd.to_string().parse::<Usd>(), Ok(usd));
    }
    let (pattern, request) = text.split_once('\n').unwrap_or((&text, "POST /v1/x"));
    if let Ok(p) = pattern.parse::<EndpointPattern>() {
        let (method, path) = request.split_once(' ').unwrap_or(("GET", request));
        let _ = any_matches(&[p.clone()], method, path);
        assert_eq!(p.to_string().parse::<EndpointPattern>().ok(), Some(p));
    }
});
