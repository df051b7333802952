//! Typed calls of the scripts and of the few plain commands around them. Every call runs under
//! a timeout; a reply of an unexpected shape is an error, never a default. The types of what is
//! asked and answered live beside it: `admission`, `settlement`, `rule`, `audit`, `error`; the
//! sweeper in `sweep`.

use std::{sync::LazyLock, time::Duration};

use keybrake_crds::{Usd, Vendor};
use redis::{AsyncCommands, Script, aio::ConnectionLike};

use crate::{
    admission::decode_admission,
    error::{opt_int, reply_int},
    layout::{Keyspace, Slot},
    record::{KeyRecord, PolicyRecord, Spend},
    token::{KeyId, PolicyTag},
};
pub use crate::{
    admission::{Admission, Mode, ReserveRequest, StoredResponse},
    audit::AuditEntry,
    error::{LedgerError, Result},
    rule::{Refusal, Rule},
    settlement::{Outcome, SettleRequest, Settlement},
};

static RESERVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/reserve.lua")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/settle.lua")));
static UNLOCK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/unlock.lua")));

/// Tunables of the accounting.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Longest wait for one Redis call.
    pub timeout: Duration,
    /// After this, an unsettled reservation is settled as "unknown outcome" by the sweeper.
    /// Must exceed the longest upstream call.
    pub reservation_deadline: Duration,
    /// How long a stored Idempotency-Key outcome is replayed (Stripe keeps 24 hours).
    pub idempotency_ttl: Duration,
    /// Approximate length of each policy's audit stream.
    pub audit_max_len: u64,
    /// How long a key remembers what it counted for a vendor object (a PaymentIntent may be
    /// captured up to a week after its authorisation; after this it is costed again).
    pub objects_ttl: Duration,
    /// Largest response body stored for replay under an Idempotency-Key; a larger one is not
    /// kept, so one key cannot fill Redis for every tenant.
    pub max_stored_response: usize,
    /// Longest time after the first attempt that a call of unknown outcome is re-attempted under
    /// its Idempotency-Key: Stripe and Resend keep keys for 24 hours, so after that a re-attempt
    /// would be a new call the ledger does not count.
    pub reattempt_window: Duration,
}

impl Default for LedgerConfig {
    fn default() -> LedgerConfig {
        LedgerConfig {
            timeout: Duration::from_secs(2),
            reservation_deadline: Duration::from_secs(300),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            audit_max_len: 100_000,
            objects_ttl: Duration::from_secs(30 * 24 * 3600),
            max_stored_response: 64 * 1024,
            reattempt_window: Duration::from_secs(23 * 3600),
        }
    }
}

/// The accounting over one Redis (single node or cluster).
#[derive(Clone)]
pub struct Ledger<C> {
    pub(crate) conn: C,
    pub(crate) keys: Keyspace,
    pub(crate) config: LedgerConfig,
}

impl<C: ConnectionLike + Clone + Send + Sync> Ledger<C> {
    /// A ledger over `conn`.
    pub fn new(conn: C, keys: Keyspace, config: LedgerConfig) -> Ledger<C> {
        Ledger { conn, keys, config }
    }

    /// The keyspace.
    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    pub(crate) async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.config.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(LedgerError::Timeout(self.config.timeout)),
        }
    }

    pub(crate) fn slot(&self, id: &KeyId) -> Slot {
        self.keys.policy(&id.tag())
    }

    /// Writes (replaces) a key record.
    pub async fn write_key(&self, id: &KeyId, record: &KeyRecord) -> Result<()> {
        let mut conn = self.conn.clone();
        let key = self.slot(id).key_record(id);
        self.timed(conn.hset_multiple::<_, _, _, ()>(key, &record.fields()))
            .await
    }

    /// A key's record as stored, read back strictly (a malformed record is an error, never a
    /// default). `None` when there is none, or only the marks a revoke leaves on an id that
    /// was never issued (`revoked`, `retired`).
    pub async fn key_record(&self, id: &KeyId) -> Result<Option<KeyRecord>> {
        let mut conn = self.conn.clone();
        let fields: std::collections::HashMap<String, String> = self
            .timed(conn.hgetall(self.slot(id).key_record(id)))
            .await?;
        if !fields.contains_key("vendor") {
            return Ok(None);
        }
        Ok(Some(KeyRecord::from_fields(&fields)?))
    }

    /// What this key has counted so far for a vendor object (0 when nothing, or when it was
    /// counted so long ago that the record expired: then it is costed again, never less).
    pub async fn counted(&self, id: &KeyId, object: &str) -> Result<Usd> {
        let mut conn = self.conn.clone();
        let v: Option<String> = self
            .timed(conn.hget(self.slot(id).objects(id), object))
            .await?;
        match v {
            None => Ok(Usd::ZERO),
            Some(s) => s
                .parse::<u64>()
                .ok()
                .and_then(Usd::from_micros)
                .ok_or_else(|| LedgerError::Reply(format!("counted amount {s:?}"))),
        }
    }

    /// Whether the stored record already holds exactly `record`.
    pub async fn key_matches(&self, id: &KeyId, record: &KeyRecord) -> Result<bool> {
        Ok(self.key_record(id).await?.as_ref() == Some(record))
    }

    /// Marks a key revoked: every later reserve refuses it.
    pub async fn revoke(&self, id: &KeyId) -> Result<()> {
        let mut conn = self.conn.clone();
        let key = self.slot(id).key_record(id);
        self.timed(conn.hset::<_, _, _, ()>(key, "revoked", "1"))
            .await
    }

    /// Revokes a key for good: `spec.revoked` was set. Besides `revoked`, it sets `retired`, a
    /// field no record rewrite touches, so even an operator told to reissue (a CRD without the
    /// one-way rule, `revoked` set back to false) never makes the key work again.
    pub async fn retire(&self, id: &KeyId) -> Result<()> {
        let mut conn = self.conn.clone();
        let key = self.slot(id).key_record(id);
        self.timed(conn.hset_multiple::<_, _, _, ()>(key, &[("revoked", "1"), ("retired", "1")]))
            .await
    }

    /// Whether [`Ledger::retire`] ran for this key.
    pub async fn is_retired(&self, id: &KeyId) -> Result<bool> {
        let mut conn = self.conn.clone();
        let v: Option<String> = self
            .timed(conn.hget(self.slot(id).key_record(id), "retired"))
            .await?;
        match v.as_deref() {
            None => Ok(false),
            Some("1") => Ok(true),
            Some(other) => Err(LedgerError::Reply(format!(
                "key record field retired is {other:?}, not 1"
            ))),
        }
    }

    /// Removes a key record (its spend counters stay for reporting).
    pub async fn delete_key(&self, id: &KeyId) -> Result<()> {
        let mut conn = self.conn.clone();
        let key = self.slot(id).key_record(id);
        self.timed(conn.del::<_, ()>(key)).await
    }

    /// Writes a policy record and lists the policy for the sweeper.
    pub async fn write_policy(&self, tag: &PolicyTag, record: &PolicyRecord) -> Result<()> {
        let mut conn = self.conn.clone();
        let slot = self.keys.policy(tag);
        self.timed(conn.hset_multiple::<_, _, _, ()>(slot.policy_record(), &record.fields()))
            .await?;
        self.timed(conn.sadd::<_, _, ()>(self.keys.policy_index(), tag.as_str()))
            .await
    }

    /// Takes the lock on a vendor object of this key for `ttl`, unless another call holds it;
    /// returns whether it was taken. `token` identifies the holder for [`Ledger::unlock_object`].
    pub async fn lock_object(
        &self,
        id: &KeyId,
        object: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = self
            .timed(
                redis::cmd("SET")
                    .arg(self.slot(id).object_lock(id, object))
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Releases the lock if `token` still holds it.
    pub async fn unlock_object(&self, id: &KeyId, object: &str, token: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .timed(
                UNLOCK
                    .key(self.slot(id).object_lock(id, object))
                    .arg(token)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// Whether the key record of `id` exists and names the VaultKey `vault_key`
    /// (`namespace/name`) with uid `uid`: a key id read from a status or a Secret is acted on
    /// only then, so a status or Secret written by someone else cannot make the operator or the
    /// proxy revoke or adopt another key, nor can an earlier object of the same name. (A record
    /// written before uids were recorded matches on the name alone.)
    pub async fn key_belongs_to(&self, id: &KeyId, vault_key: &str, uid: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let (named, owner): (Option<String>, Option<String>) = self
            .timed(
                redis::cmd("HMGET")
                    .arg(self.slot(id).key_record(id))
                    .arg("vault_key")
                    .arg("vault_key_uid")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(named.as_deref() == Some(vault_key)
            && owner.as_deref().is_none_or(|o| o.is_empty() || o == uid))
    }

    /// Claims a policy's slot for `owner` (`namespace/name`), once and for good: the tag is a
    /// 48-bit hash, so two policies could share one, and then one would spend from the other's
    /// budget or records. The first owner keeps it; returns the other owner when it is taken.
    pub async fn claim_tag(&self, tag: &PolicyTag, owner: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let record = self.keys.policy(tag).policy_record();
        self.timed(conn.hset_nx::<_, _, _, ()>(&record, "owner", owner))
            .await?;
        let holder: Option<String> = self.timed(conn.hget(&record, "owner")).await?;
        match holder {
            Some(h) if h == owner => Ok(None),
            Some(h) => Ok(Some(h)),
            None => Err(LedgerError::Reply(format!(
                "the owner of slot {tag} vanished while it was claimed"
            ))),
        }
    }

    /// Redis' clock: (Unix ms, UTC day number).
    pub async fn now(&self) -> Result<(i64, i64)> {
        let mut conn = self.conn.clone();
        let (secs, micros): (i64, i64) = self
            .timed(redis::cmd("TIME").query_async(&mut conn))
            .await?;
        Ok((secs * 1000 + micros / 1000, secs / 86_400))
    }

    async fn read_spend(&self, key: String) -> Result<Spend> {
        let mut conn = self.conn.clone();
        let (_, today_day) = self.now().await?;
        let v: Vec<Option<String>> = self
            .timed(conn.hmget(
                key,
                &["day", "today", "total", "calls", "refused", "last_call_ms"],
            ))
            .await?;
        // A counter not yet written is 0; one that does not parse is an error, not a 0.
        const NAMES: [&str; 6] = ["day", "today", "total", "calls", "refused", "last_call_ms"];
        let mut n = [None; 6];
        for (i, name) in NAMES.iter().enumerate() {
            n[i] = opt_int(v.get(i).and_then(Option::as_ref), name)?;
        }
        let same_day = n[0] == Some(today_day as u64);
        Ok(Spend {
            today: if same_day { n[1].unwrap_or(0) } else { 0 },
            total: n[2].unwrap_or(0),
            calls: n[3].unwrap_or(0),
            refused: n[4].unwrap_or(0),
            last_call_ms: n[5].map(|x| x as i64),
        })
    }

    /// A key's spend counters.
    pub async fn key_spend(&self, id: &KeyId) -> Result<Spend> {
        self.read_spend(self.slot(id).key_spend(id)).await
    }

    /// A policy's aggregate spend.
    pub async fn policy_spend(&self, tag: &PolicyTag) -> Result<Spend> {
        self.read_spend(self.keys.policy(tag).policy_spend()).await
    }

    /// The reserve script's keys and arguments for one call.
    fn reserve_parts(&self, req: &ReserveRequest<'_>, res_id: &str) -> (Vec<String>, Vec<String>) {
        let slot = self.slot(req.key_id);
        let (idem_key, fingerprint) = match req.idempotency {
            Some((k, f)) => (slot.idempotency(req.key_id, k), f),
            None => (slot.reservation(res_id), ""),
        };
        let keys = vec![
            slot.key_record(req.key_id),
            slot.key_spend(req.key_id),
            slot.policy_record(),
            slot.policy_spend(),
            slot.reservations(),
            slot.reservation(res_id),
            idem_key,
            slot.audit(),
        ];
        let mut keys = keys;
        keys.extend(req.owned.iter().map(|o| slot.owner(o)));
        let args = vec![
            req.secret_hash.to_owned(),
            req.method.to_owned(),
            req.path.to_owned(),
            req.estimate.micros().to_string(),
            res_id.to_owned(),
            (self.config.reservation_deadline.as_millis() as u64).to_string(),
            if req.idempotency.is_some() { "1" } else { "0" }.to_owned(),
            fingerprint.to_owned(),
            self.config.idempotency_ttl.as_secs().to_string(),
            self.config.audit_max_len.to_string(),
            req.key_id.as_str().to_owned(),
            match req.mode {
                Mode::Reserve => "reserve",
                Mode::Check => "check",
            }
            .to_owned(),
            if req.read { "1" } else { "0" }.to_owned(),
            (self.config.reattempt_window.as_millis() as u64).to_string(),
            if req.run_scope { "1" } else { "0" }.to_owned(),
            req.commits_until_ms.unwrap_or(0).to_string(),
        ];
        (keys, args)
    }

    /// The `EVALSHA` command line of one reserve (for `redis-benchmark` and debugging); the
    /// script must be loaded (any earlier reserve loads it).
    pub fn reserve_command(&self, req: &ReserveRequest<'_>, res_id: &str) -> Vec<String> {
        let (keys, args) = self.reserve_parts(req, res_id);
        let mut cmd = vec![
            "EVALSHA".to_owned(),
            RESERVE.get_hash().to_owned(),
            keys.len().to_string(),
        ];
        cmd.extend(keys);
        cmd.extend(args);
        cmd
    }

    /// Admits a call and reserves its estimate, or says why not.
    pub async fn reserve(&self, req: &ReserveRequest<'_>) -> Result<Admission> {
        let res_id = hex::encode(rand::random::<[u8; 12]>());
        let (keys, args) = self.reserve_parts(req, &res_id);
        let mut inv = RESERVE.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<u8>> = self.timed(inv.invoke_async(&mut conn)).await?;
        decode_admission(reply)
    }

    /// Closes a reservation exactly once.
    pub async fn settle(&self, req: &SettleRequest<'_>) -> Result<Settlement> {
        let slot = self.slot(req.key_id);
        let idem_key = match req.idempotency_key {
            Some(k) => slot.idempotency(req.key_id, k),
            None => slot.reservation(req.reservation),
        };
        self.settle_raw(req, &slot, idem_key, false).await
    }

    /// `swept`: closed by the sweeper, the one closing a late settle can follow (see
    /// `settle.tombstone`).
    pub(crate) async fn settle_raw(
        &self,
        req: &SettleRequest<'_>,
        slot: &Slot,
        idem_key: String,
        swept: bool,
    ) -> Result<Settlement> {
        let empty = StoredResponse {
            status: 0,
            headers_json: String::new(),
            body: Vec::new(),
            kept: true,
        };
        let response = req.response.unwrap_or(&empty);
        let kept = response.kept && response.body.len() <= self.config.max_stored_response;
        let body: &[u8] = if kept { &response.body } else { b"" };
        let mut inv = SETTLE.prepare_invoke();
        inv.key(slot.reservation(req.reservation))
            .key(slot.key_spend(req.key_id))
            .key(slot.policy_spend())
            .key(slot.reservations())
            .key(idem_key)
            .key(slot.audit())
            .key(slot.key_record(req.key_id))
            .key(slot.objects(req.key_id))
            .key(slot.closed_unknown(req.reservation));
        for object in req.created {
            inv.key(slot.owner(object));
        }
        inv.arg(req.reservation)
            .arg(req.actual.micros())
            .arg(req.outcome.as_str())
            .arg(req.status.map(|s| s.to_string()).unwrap_or_default())
            .arg(req.request_id)
            .arg(&response.headers_json)
            .arg(body)
            .arg(self.config.idempotency_ttl.as_secs())
            .arg(self.config.audit_max_len)
            .arg(req.vendor.map_or("", Vendor::as_str))
            .arg(req.object.unwrap_or(""))
            .arg(self.config.objects_ttl.as_secs())
            .arg(if kept { "1" } else { "0" })
            .arg(if swept { "1" } else { "0" });
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.timed(inv.invoke_async(&mut conn)).await?;
        match reply.first().map(String::as_str) {
            Some("already_settled") => Ok(Settlement::AlreadySettled),
            Some("settled") => Ok(Settlement::Settled {
                delta: reply
                    .get(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| LedgerError::Reply("delta".into()))?,
                today: reply_int(reply.get(2), "today")?,
                total: reply_int(reply.get(3), "total")?,
            }),
            other => Err(LedgerError::Reply(format!("settle returned {other:?}"))),
        }
    }

    /// The connection (clones share it).
    pub fn connection(&self) -> C {
        self.conn.clone()
    }

    /// The key record's name in Redis (its primary is the one that holds the key's slot).
    pub fn key_record_name(&self, id: &KeyId) -> String {
        self.slot(id).key_record(id)
    }

    /// Every policy tag with records (the sweeper's and the audit view's index).
    pub async fn policy_tags(&self) -> Result<Vec<PolicyTag>> {
        let mut conn = self.conn.clone();
        let tags: Vec<String> = self.timed(conn.smembers(self.keys.policy_index())).await?;
        Ok(tags.into_iter().map(PolicyTag::from_index).collect())
    }

    /// A policy's audit entries between two times (Unix ms, inclusive), oldest first, at most
    /// `count`.
    pub async fn audit(
        &self,
        tag: &PolicyTag,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        count: usize,
    ) -> Result<Vec<AuditEntry>> {
        let mut conn = self.conn.clone();
        let start = from_ms.map_or("-".to_owned(), |ms| format!("{ms}-0"));
        let end = to_ms.map_or("+".to_owned(), |ms| format!("{ms}-18446744073709551615"));
        let reply: redis::streams::StreamRangeReply = self
            .timed(conn.xrange_count(self.keys.policy(tag).audit(), start, end, count))
            .await?;
        let (entries, malformed) = crate::audit::split(reply.ids);
        match malformed.into_iter().next() {
            Some(bad) => Err(bad.into()),
            None => Ok(entries),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(parts: &[&str]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    #[test]
    fn decodes_every_admission_and_rejects_garbage() {
        assert_eq!(
            decode_admission(r(&["granted", "abc", "5", "7", "ns/k", "ns/p"])).unwrap(),
            Admission::Granted {
                reservation: "abc".into(),
                today: 5,
                total: 7,
                vault_key: "ns/k".into(),
                policy: "ns/p".into(),
            }
        );
        assert_eq!(
            decode_admission(r(&[
                "refused",
                "daily_cap",
                "500",
                "490",
                "12",
                "ns/k",
                "ns/p"
            ]))
            .unwrap(),
            Admission::Refused(Refusal {
                rule: Rule::DailyCap,
                limit: Some(500),
                spent: Some(490),
                estimate: 12,
                vault_key: "ns/k".into(),
                policy: "ns/p".into(),
            })
        );
        assert_eq!(
            // Before authentication the script names no VaultKey or policy: empty, but there.
            decode_admission(r(&["refused", "revoked", "", "", "0", "", ""])).unwrap(),
            Admission::Refused(Refusal {
                rule: Rule::Revoked,
                limit: None,
                spent: None,
                estimate: 0,
                vault_key: String::new(),
                policy: String::new(),
            })
        );
        assert_eq!(
            decode_admission(r(&["in_flight"])).unwrap(),
            Admission::InFlight
        );
        assert!(
            matches!(decode_admission(r(&["replay", "200", "{}", "body", "1"])).unwrap(), Admission::Replay(s) if s.body == b"body" && s.kept)
        );
        for bad in [
            &["granted"][..],
            &["refused", "nope", "", "", "1", "", ""],
            &["refused", "revoked", "", "", "0"],
            &["refused", "daily_cap", "lots", "", "1", "", ""],
            &["what"],
            &[],
            &["granted", "a", "x", "1"],
            &["replay", "200", "{}", "body"],
            &["admitted", "ns/k"],
        ] {
            assert!(decode_admission(r(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rules_round_trip() {
        for &rule in Rule::ALL {
            assert_eq!(Rule::parse(rule.as_str()), Some(rule));
        }
        let names: std::collections::HashSet<_> = Rule::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Rule::ALL.len(), "two rules share a name");
        assert_eq!(Rule::parse("nope"), None);
        assert!(Rule::DailyCap.is_cap() && !Rule::Revoked.is_cap());
    }

    /// The lines from `-- audit-xadd: begin` to `-- audit-xadd: end`, markers included; each
    /// marker must be there exactly once.
    fn audit_xadd_block(script: &str) -> &str {
        const BEGIN: &str = "-- audit-xadd: begin";
        const END: &str = "-- audit-xadd: end";
        assert_eq!(script.matches(BEGIN).count(), 1, "one {BEGIN:?}");
        assert_eq!(script.matches(END).count(), 1, "one {END:?}");
        let start = script.find(BEGIN).unwrap();
        let stop = script.find(END).unwrap() + END.len();
        assert!(start < stop, "{BEGIN:?} comes before {END:?}");
        &script[start..stop]
    }

    /// reserve.lua and settle.lua each append audit entries with their own copy of `xadd` (a
    /// script cannot call another's functions): the two copies must trim the stream alike.
    #[test]
    fn reserve_and_settle_append_audit_entries_alike() {
        let reserve = audit_xadd_block(include_str!("../lua/reserve.lua"));
        let settle = audit_xadd_block(include_str!("../lua/settle.lua"));
        assert!(reserve.contains("XADD"), "the block holds the XADD");
        assert_eq!(reserve, settle, "the audit-xadd blocks differ");
    }
}
