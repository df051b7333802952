//! keybrake-ledger: how spend is accounted in Redis. The layout of key and policy records and
//! spend counters, vault tokens, and the reserve/settle Lua scripts (in `lua/`, loaded once,
//! called by EVALSHA). The operator writes records; the proxy reserves and settles.
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod connection;
pub mod effective;
pub mod error;
pub mod export;
pub mod flags;
pub mod layout;
pub mod ledger;
pub mod record;
pub mod rule;
pub mod secret_env;
pub mod settlement;
mod sweep;
pub mod tls;
pub mod token;

pub use effective::{EffectiveKey, resolve_key};
pub use layout::{Keyspace, Slot};
pub use ledger::{
    Admission, AuditEntry, Ledger, LedgerConfig, LedgerError, Mode, Outcome, Refusal,
    ReserveRequest, Rule, SettleRequest, Settlement, StoredResponse,
};
pub use record::{KeyRecord, PolicyRecord, Spend};
pub use token::{KeyId, PolicyTag, Token, TokenError};
