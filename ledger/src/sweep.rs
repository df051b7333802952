//! The sweeper: reservations a crashed or hung-up proxy left open are closed as "unknown
//! outcome" once past their deadline, keeping their estimate counted (never released).

use keybrake_crds::{Usd, Vendor};
use redis::{AsyncCommands, aio::ConnectionLike};

use crate::{
    error::Result,
    ledger::Ledger,
    settlement::{Outcome, SettleRequest, Settlement},
    token::{KeyId, PolicyTag},
};

impl<C: ConnectionLike + Clone + Send + Sync> Ledger<C> {
    /// Settles reservations past their deadline as "unknown outcome" (their estimate stays
    /// counted, the audit trail says so). Returns how many it closed.
    pub async fn sweep(&self, batch: usize) -> Result<usize> {
        let mut conn = self.conn.clone();
        let (now_ms, _) = self.now().await?;
        let tags: Vec<String> = self.timed(conn.smembers(self.keys.policy_index())).await?;
        let mut closed = 0;
        for tag in tags {
            let slot = self.keys.policy(&PolicyTag::from_index(tag));
            let due: Vec<String> = self
                .timed(conn.zrangebyscore_limit(
                    slot.reservations(),
                    "-inf",
                    now_ms,
                    0,
                    batch as isize,
                ))
                .await?;
            for res_id in due {
                let fields: Vec<Option<String>> = self
                    .timed(conn.hmget(slot.reservation(&res_id), &["key", "idem"]))
                    .await?;
                let Some(Ok(key_id)) = fields.first().cloned().flatten().map(|k| KeyId::parse(&k))
                else {
                    // A zset entry without its reservation: drop the entry.
                    self.timed(conn.zrem::<_, _, ()>(slot.reservations(), &res_id))
                        .await?;
                    continue;
                };
                let vendor: Option<String> = self
                    .timed(conn.hget(slot.key_record(&key_id), "vendor"))
                    .await?;
                // The vendor only names the audit entry. A record whose vendor does not parse
                // must not stop the sweep: its reservation would come first in every round and
                // no reservation of any policy would ever be closed again.
                let vendor = vendor.and_then(|v| v.parse::<Vendor>().ok());
                let idem = fields
                    .get(1)
                    .cloned()
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| slot.reservation(&res_id));
                let req = SettleRequest {
                    key_id: &key_id,
                    vendor,
                    reservation: &res_id,
                    outcome: Outcome::Unknown,
                    actual: Usd::ZERO,
                    status: None,
                    request_id: "",
                    idempotency_key: None,
                    response: None,
                    object: None,
                    created: &[],
                };
                if let Settlement::Settled { .. } = self.settle_raw(&req, &slot, idem, true).await?
                {
                    closed += 1;
                }
            }
        }
        Ok(closed)
    }
}
