//! The end-to-end suite: one test binary, one module per part of the system.
// Test code: a failed unwrap is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attacks;
mod examples;
mod faults;
mod issuance;
mod kube_lite_api;
mod kube_lite_controller;
mod kube_lite_kubectl;
mod kube_lite_watch;
mod layout;
mod ledger_scripts;
mod operator;
mod ownership;
mod packaging;
mod proxy;
mod proxy_tls;
mod redis_cluster;
mod redis_sentinel;
mod redis_tls;
mod sdk;
mod upgrade;
mod vendor_reading;
mod workflows;
