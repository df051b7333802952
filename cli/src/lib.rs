//! The `keybrake` command: the local stack (`keybrake dev`), vendor sandboxes, CRD generation,
//! and the spend and audit views.
#![forbid(unsafe_code)]

pub mod dev;
pub mod postgres;
pub mod sandbox;
pub mod views;
