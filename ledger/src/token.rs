//! Vault tokens: what a workload presents instead of the real vendor secret.
//!
//! A token names its vendor and key id, so the proxy needs no path prefix (Node stripe sends
//! bare `/v1/...`), and the key id carries the policy's tag, so the proxy finds the Redis slot
//! of the key and its policy from the token alone. Bearer form: `kb_<vendor>_<key id>_<secret>`;
//! Twilio form (HTTP Basic): user `AC<key id>`, password `<secret>`, which also looks like a
//! Twilio account SID in the SDK's request paths. Only the secret's SHA-256 is stored.

use std::fmt;

use keybrake_crds::Vendor;
use sha2::{Digest, Sha256};

/// Hex characters of the policy tag inside a key id.
pub const TAG_LEN: usize = 12;
/// Hex characters of a key id (the length of a Twilio SID's hex part).
pub const KEY_ID_LEN: usize = 32;
/// Hex characters of a secret: 256 bits from the OS RNG.
pub const SECRET_LEN: usize = 64;

/// Why a presented credential is not a vault token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `kb_<vendor>_<key id>_<secret>`.
    #[error("malformed vault key: expected kb_<vendor>_<32 hex key id>_<64 hex secret>")]
    Malformed,
    /// A vendor the proxy does not front.
    #[error("vault key names unknown vendor {0:?}")]
    UnknownVendor(String),
}

/// Identifies the slot of a policy's keys in Redis: 12 hex characters of
/// SHA-256(`namespace/policy`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyTag(String);

impl PolicyTag {
    /// The tag of a SpendPolicy.
    pub fn of(namespace: &str, policy: &str) -> PolicyTag {
        let digest = Sha256::digest(format!("{namespace}/{policy}").as_bytes());
        PolicyTag(hex::encode(digest)[..TAG_LEN].to_owned())
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A tag read back from the policy index.
    pub fn from_index(text: String) -> PolicyTag {
        PolicyTag(text)
    }
}

impl fmt::Display for PolicyTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key id: the policy tag followed by 20 random hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// A fresh key id under `tag`.
    pub fn generate(tag: &PolicyTag) -> KeyId {
        let random: [u8; (KEY_ID_LEN - TAG_LEN) / 2] = rand::random();
        KeyId(format!("{}{}", tag.0, hex::encode(random)))
    }

    /// The key id of one VaultKey for its whole life, from its uid: a Secret deleted and
    /// reissued, or a lost status, yields the same id, so spend keeps counting against the same
    /// caps. A new VaultKey (a new uid) is a new key.
    pub fn of_vault_key(tag: &PolicyTag, uid: &str) -> KeyId {
        let digest = Sha256::digest(format!("keybrake.com/vault-key/{uid}").as_bytes());
        KeyId(format!(
            "{}{}",
            tag.0,
            &hex::encode(digest)[..KEY_ID_LEN - TAG_LEN]
        ))
    }

    /// Parses a key id (32 lowercase hex characters).
    pub fn parse(text: &str) -> Result<KeyId, TokenError> {
        is_hex(text, KEY_ID_LEN)
            .then(|| KeyId(text.to_owned()))
            .ok_or(TokenError::Malformed)
    }

    /// The policy tag inside the id.
    pub fn tag(&self) -> PolicyTag {
        PolicyTag(self.0[..TAG_LEN].to_owned())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A vault token: vendor, key id and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The vendor it is for.
    pub vendor: Vendor,
    /// Its key id.
    pub key_id: KeyId,
    secret: String,
}

impl fmt::Debug for Token {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({} {} <secret>)", self.vendor, self.key_id)
    }
}

impl Token {
    /// A fresh token for `key_id` with 256 random bits of secret.
    pub fn generate(vendor: Vendor, key_id: KeyId) -> Token {
        let secret: [u8; SECRET_LEN / 2] = rand::random();
        Token {
            vendor,
            key_id,
            secret: hex::encode(secret),
        }
    }

    /// Parses the Bearer form.
    pub fn parse_bearer(text: &str) -> Result<Token, TokenError> {
        let rest = text.strip_prefix("kb_").ok_or(TokenError::Malformed)?;
        let (vendor, rest) = rest.split_once('_').ok_or(TokenError::Malformed)?;
        let (key_id, secret) = rest.split_once('_').ok_or(TokenError::Malformed)?;
        let vendor = vendor
            .parse()
            .map_err(|_| TokenError::UnknownVendor(vendor.to_owned()))?;
        Token::from_parts(vendor, key_id, secret)
    }

    /// Parses the Twilio Basic form: user `AC<key id>`, password `<secret>`.
    pub fn parse_twilio(user: &str, password: &str) -> Result<Token, TokenError> {
        let key_id = user.strip_prefix("AC").ok_or(TokenError::Malformed)?;
        Token::from_parts(Vendor::Twilio, key_id, password)
    }

    fn from_parts(vendor: Vendor, key_id: &str, secret: &str) -> Result<Token, TokenError> {
        if !is_hex(secret, SECRET_LEN) {
            return Err(TokenError::Malformed);
        }
        Ok(Token {
            vendor,
            key_id: KeyId::parse(key_id)?,
            secret: secret.to_owned(),
        })
    }

    /// The Bearer form, `kb_<vendor>_<key id>_<secret>`.
    pub fn bearer(&self) -> String {
        format!("kb_{}_{}_{}", self.vendor, self.key_id, self.secret)
    }

    /// The Twilio account SID form of the key id, `AC<key id>`.
    pub fn twilio_sid(&self) -> String {
        format!("AC{}", self.key_id)
    }

    /// The secret alone (Twilio's auth token).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// SHA-256 of the secret, hex: what Redis stores and compares.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vault_key_has_one_key_id_for_life() {
        let tag = PolicyTag::of("billing", "stripe");
        let a = KeyId::of_vault_key(&tag, "uid-1");
        assert_eq!(a, KeyId::of_vault_key(&tag, "uid-1"));
        assert_ne!(a, KeyId::of_vault_key(&tag, "uid-2"));
        assert_eq!(a.tag(), tag);
        assert_eq!(KeyId::parse(a.as_str()), Ok(a));
    }

    #[test]
    fn tokens_round_trip_and_name_their_slot() {
        let tag = PolicyTag::of("billing", "stripe");
        assert_eq!(tag.as_str().len(), TAG_LEN);
        assert_eq!(tag, PolicyTag::of("billing", "stripe"));
        assert_ne!(tag, PolicyTag::of("billing2", "stripe"));
        let id = KeyId::generate(&tag);
        assert_eq!(id.tag(), tag);
        let t = Token::generate(Vendor::Stripe, id.clone());
        let parsed = Token::parse_bearer(&t.bearer()).unwrap();
        assert_eq!(parsed, t);
        assert_eq!(parsed.secret_hash().len(), 64);
        let tw = Token::generate(Vendor::Twilio, id);
        assert_eq!(
            Token::parse_twilio(&tw.twilio_sid(), tw.secret()).unwrap(),
            tw
        );
        assert_eq!(tw.twilio_sid().len(), 34, "an AC SID is AC + 32 hex");
    }

    #[test]
    fn secrets_are_fresh_and_never_printed() {
        let id = KeyId::generate(&PolicyTag::of("a", "b"));
        let a = Token::generate(Vendor::Resend, id.clone());
        let b = Token::generate(Vendor::Resend, id);
        assert_ne!(a.secret(), b.secret());
        assert!(!format!("{a:?}").contains(a.secret()));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good =
            Token::generate(Vendor::Stripe, KeyId::generate(&PolicyTag::of("a", "b"))).bearer();
        for bad in [
            "",
            "sk_test_123",
            "kb_stripe",
            &good.replace("kb_", "kx_"),
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.to_uppercase(),
            &good.replace('_', "-"),
        ] {
            assert!(Token::parse_bearer(bad).is_err(), "{bad}");
        }
        let paypal = good.replacen("stripe", "paypal", 1);
        assert_eq!(
            Token::parse_bearer(&paypal),
            Err(TokenError::UnknownVendor("paypal".into()))
        );
        assert!(Token::parse_twilio("SK123", "x").is_err());
    }
}
