//! What the data path reads from a caller before anything is reserved: the Authorization
//! header, the path, and the body the vendor adapters cost. Input: vendor byte, method byte,
//! then path, header and body separated by NUL.
#![no_main]

use keybrake_crds::{Vendor, spend_policy::Pricing};
use keybrake_proxy::{adapters, auth, path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let vendor = Vendor::ALL[data[0] as usize % Vendor::ALL.len()];
    let method = ["GET", "POST", "DELETE", "PATCH"][data[1] as usize % 4];
    let mut parts = data[2..].splitn(3, |b| *b == 0);
    let raw_path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let header = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let mut headers = hyper::HeaderMap::new();
    if let Ok(v) = hyper::header::HeaderValue::from_bytes(header) {
        headers.insert(hyper::header::AUTHORIZATION, v);
        let _ = auth::credential(&headers);
    }
    if let Ok(p) = path::canonical(vendor, &raw_path) {
        assert!(p.starts_with('/') && !p.contains("//"));
        let pricing = Pricing::default();
        if let Ok(request) = adapters::read(vendor, method, &p, None, &headers, body) {
            let _ = adapters::plan(&request, &pricing);
        }
    }
});
