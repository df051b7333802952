//! Redis key names. Everything of one policy shares the hash tag `{<prefix>:<policy tag>}`,
//! so one script's keys always sit in one Redis Cluster slot.

use sha2::{Digest, Sha256};

use crate::token::{KeyId, PolicyTag};

/// Key names under a prefix (`kb` in production; tests use a unique prefix each, so they
/// never need FLUSHALL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: String,
}

impl Default for Keyspace {
    fn default() -> Keyspace {
        Keyspace::new("kb")
    }
}

impl Keyspace {
    /// A keyspace under `prefix`.
    pub fn new(prefix: &str) -> Keyspace {
        Keyspace {
            prefix: prefix.to_owned(),
        }
    }

    /// The keys of one policy's slot.
    pub fn policy(&self, tag: &PolicyTag) -> Slot {
        Slot {
            base: format!("{{{}:{tag}}}", self.prefix),
        }
    }

    /// The set of every policy tag (what the sweeper walks). It lives outside the slots.
    pub fn policy_index(&self) -> String {
        format!("{}:policies", self.prefix)
    }
}

/// The keys of one policy's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    base: String,
}

impl Slot {
    /// Hash: the key record (operator-written).
    pub fn key_record(&self, id: &KeyId) -> String {
        format!("{}:key:{id}", self.base)
    }

    /// Hash: the key's spend counters.
    pub fn key_spend(&self, id: &KeyId) -> String {
        format!("{}:spend:{id}", self.base)
    }

    /// Hash: the policy record (operator-written).
    pub fn policy_record(&self) -> String {
        format!("{}:policy", self.base)
    }

    /// Hash: the policy's aggregate spend.
    pub fn policy_spend(&self) -> String {
        format!("{}:pspend", self.base)
    }

    /// Zset: open reservations by sweep deadline.
    pub fn reservations(&self) -> String {
        format!("{}:reservations", self.base)
    }

    /// Hash: one open reservation.
    pub fn reservation(&self, res_id: &str) -> String {
        format!("{}:res:{res_id}", self.base)
    }

    /// Hash: a reservation closed as "unknown" (key, amount, day), kept for a while so the
    /// replica's late settle can count what the vendor showed above the estimate.
    pub fn closed_unknown(&self, res_id: &str) -> String {
        format!("{}:unknown:{res_id}", self.base)
    }

    /// Hash: the outcome stored under an Idempotency-Key (hashed, so no caller text becomes a
    /// key name).
    pub fn idempotency(&self, id: &KeyId, idempotency_key: &str) -> String {
        let h = hex::encode(Sha256::digest(idempotency_key.as_bytes()));
        format!("{}:idem:{id}:{}", self.base, &h[..32])
    }

    /// Hash: vendor object id -> micro-dollars this key has counted for it (a PaymentIntent
    /// counted at creation costs nothing more to confirm or capture).
    pub fn objects(&self, id: &KeyId) -> String {
        format!("{}:objects:{id}", self.base)
    }

    /// String: a lock one call holds on a vendor object of this key while it is costed and
    /// forwarded, so two calls on it are never both costed against its old state.
    pub fn object_lock(&self, id: &KeyId, object: &str) -> String {
        let h = hex::encode(Sha256::digest(object.as_bytes()));
        format!("{}:lock:{id}:{}", self.base, &h[..32])
    }

    /// String: `<key id>\n<run label>` of the key that created a vendor object through the
    /// proxy; only that key (or its run, where the policy says so) may act on the object.
    pub fn owner(&self, object: &str) -> String {
        let h = hex::encode(Sha256::digest(object.as_bytes()));
        format!("{}:owner:{}", self.base, &h[..32])
    }

    /// Stream: the audit trail of every call on the policy's keys.
    pub fn audit(&self) -> String {
        format!("{}:audit", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_policy_shares_its_hash_tag() {
        let tag = PolicyTag::of("billing", "stripe");
        let slot = Keyspace::default().policy(&tag);
        let id = KeyId::generate(&tag);
        let hash_tag = format!("{{kb:{tag}}}");
        for k in [
            slot.key_record(&id),
            slot.key_spend(&id),
            slot.policy_record(),
            slot.policy_spend(),
            slot.reservations(),
            slot.reservation("r1"),
            slot.idempotency(&id, "any\nthing"),
            slot.audit(),
            slot.objects(&id),
            slot.closed_unknown("r1"),
            slot.owner("pi_3Nabc\nx"),
        ] {
            assert!(k.starts_with(&hash_tag), "{k}");
            assert!(!k.contains('\n'));
        }
    }
}
