//! What reserving a call asks (`ReserveRequest`) and what it decided (`Admission`), decoded
//! strictly from `reserve.lua`'s reply.

use keybrake_crds::Usd;

use crate::{
    error::{LedgerError, Result, opt_int, present, reply_int},
    rule::{Refusal, Rule},
    token::KeyId,
};

/// A vendor response stored under an Idempotency-Key, replayed to repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers to replay, as a JSON object.
    pub headers_json: String,
    /// Response body to replay, as the vendor sent it.
    pub body: Vec<u8>,
    /// False when the body was too large to keep: a repeat cannot be replayed.
    pub kept: bool,
}

/// What reserve decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Forward; the estimate is counted under `reservation`.
    Granted {
        /// Reservation id to settle.
        reservation: String,
        /// Key spend today, with the estimate.
        today: u64,
        /// Key spend in total, with the estimate.
        total: u64,
        /// `namespace/name` of the VaultKey.
        vault_key: String,
        /// `namespace/name` of the SpendPolicy.
        policy: String,
    },
    /// Forward again: an earlier attempt's outcome was unknown and is already counted.
    Reattempt {
        /// Reservation id to settle.
        reservation: String,
        /// `namespace/name` of the VaultKey.
        vault_key: String,
        /// `namespace/name` of the SpendPolicy.
        policy: String,
    },
    /// Do not forward.
    Refused(Refusal),
    /// A repeat of a finished call: answer with the stored response.
    Replay(StoredResponse),
    /// A repeat of a call still in flight: wait and ask again.
    InFlight,
    /// Mode [`Mode::Check`]: the key may make this call; nothing was reserved.
    Admitted {
        /// `namespace/name` of the VaultKey.
        vault_key: String,
        /// `namespace/name` of the SpendPolicy.
        policy: String,
    },
}

/// What reserve does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Admit and reserve the estimate.
    Reserve,
    /// Only check the key, its secret, revocation, expiry and the allowlist (before the proxy
    /// reads a vendor object to cost the call).
    Check,
}

/// A call to admit.
#[derive(Debug, Clone)]
pub struct ReserveRequest<'a> {
    /// The key.
    pub key_id: &'a KeyId,
    /// SHA-256 hex of the presented secret.
    pub secret_hash: &'a str,
    /// HTTP method, upper case.
    pub method: &'a str,
    /// Canonical path (no query, no empty or dot segments, no trailing slash).
    pub path: &'a str,
    /// Estimated cost.
    pub estimate: Usd,
    /// The Idempotency-Key and the request fingerprint it must keep matching (writes only).
    pub idempotency: Option<(&'a str, &'a str)>,
    /// A read (GET, HEAD): the only calls that pass a spent cap.
    pub read: bool,
    /// Reserve, or only check.
    pub mode: Mode,
    /// Vendor objects the call names that this key must have created through the proxy (or a
    /// key of its run, with `run_scope`); checked before anything is read or counted.
    pub owned: &'a [String],
    /// Objects created by any key of the same run label count as the key's own.
    pub run_scope: bool,
    /// Until when the call commits money (a subscription's `cancel_at`, Unix ms): refused
    /// unless the key expires no earlier, by Redis time.
    pub commits_until_ms: Option<i64>,
}

pub(crate) fn decode_admission(reply: Vec<Vec<u8>>) -> Result<Admission> {
    let text: Vec<String> = reply
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    match text.first().map(String::as_str) {
        Some("granted") => Ok(Admission::Granted {
            reservation: text
                .get(1)
                .cloned()
                .ok_or_else(|| LedgerError::Reply("no reservation".into()))?,
            today: reply_int(text.get(2), "today")?,
            total: reply_int(text.get(3), "total")?,
            vault_key: present(&text, 4, "VaultKey")?,
            policy: present(&text, 5, "policy")?,
        }),
        Some("reattempt") => Ok(Admission::Reattempt {
            reservation: text
                .get(1)
                .cloned()
                .ok_or_else(|| LedgerError::Reply("no reservation".into()))?,
            vault_key: text
                .get(2)
                .cloned()
                .ok_or_else(|| LedgerError::Reply("re-attempt without a VaultKey".into()))?,
            policy: text
                .get(3)
                .cloned()
                .ok_or_else(|| LedgerError::Reply("re-attempt without a policy".into()))?,
        }),
        Some("refused") => {
            let rule = text
                .get(1)
                .and_then(|r| Rule::parse(r))
                .ok_or_else(|| LedgerError::Reply(format!("unknown rule {:?}", text.get(1))))?;
            Ok(Admission::Refused(Refusal {
                rule,
                limit: opt_int(text.get(2), "limit")?,
                spent: opt_int(text.get(3), "spent")?,
                estimate: reply_int(text.get(4), "estimate")?,
                // Empty before authentication (an unknown key names nobody).
                vault_key: present(&text, 5, "VaultKey")?,
                policy: present(&text, 6, "policy")?,
            }))
        }
        Some("replay") => Ok(Admission::Replay(StoredResponse {
            status: text
                .get(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| LedgerError::Reply("replay status".into()))?,
            headers_json: present(&text, 2, "replay headers")?,
            body: reply
                .get(3)
                .cloned()
                .ok_or_else(|| LedgerError::Reply("no replay body in the reply".into()))?,
            kept: match text.get(4).map(String::as_str) {
                Some("1") => true,
                Some("0") => false,
                other => return Err(LedgerError::Reply(format!("replay kept flag {other:?}"))),
            },
        })),
        Some("admitted") => Ok(Admission::Admitted {
            vault_key: text
                .get(1)
                .cloned()
                .ok_or_else(|| LedgerError::Reply("admitted without a VaultKey".into()))?,
            policy: text
                .get(2)
                .cloned()
                .ok_or_else(|| LedgerError::Reply("admitted without a policy".into()))?,
        }),
        Some("in_flight") => Ok(Admission::InFlight),
        other => Err(LedgerError::Reply(format!("reserve returned {other:?}"))),
    }
}
