//! The Lua scripts (reserve.lua, settle.lua, unlock.lua) against real redis-server processes,
//! a single node and a three-node Redis Cluster, started by keybrake-redis-harness. One test
//! binary: a module per part.
// Test code: a failed unwrap is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contract;
mod fixture;
mod owners;
mod reserve_settle;
