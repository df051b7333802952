//! The end-to-end suite: one test binary, one module per behaviour or part of the system.
// Test code: a failed unwrap is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit_trail;
mod benchmarks;
mod cap_under_attack;
mod crds_in_kubectl;
mod faults;
mod gitops_health;
mod issuance;
mod key_lifecycle;
mod layout;
// The ledger's script-test fixture (a ledger in a keyspace of its own), which the audit-trail tests
// share: one file for both binaries. This binary uses only part of it.
#[allow(dead_code)]
#[path = "../../../ledger/tests/scripts/fixture.rs"]
mod ledger_fixture;
mod metered_calls;
mod object_scope;
mod ownership;
mod packaging;
mod proxy_tls;
mod redis_cluster;
mod redis_sentinel;
mod redis_tls;
mod shipped_examples;
mod stripe_parameters;
mod unreadable_objects;
mod upgrade;
mod vendor_reading;
mod vendor_sdks;
mod workflow_frameworks;
