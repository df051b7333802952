//! A ledger in a keyspace of its own over a real Redis connection, and the calls the script
//! tests make through it. Shared with the end-to-end suite's audit-trail tests
//! (`tests/tests/e2e/main.rs` includes this file by path), so it uses neither binary's harness.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use keybrake_crds::{Usd, Vendor};
use keybrake_ledger::{
    Admission, KeyId, KeyRecord, Keyspace, Ledger, LedgerConfig, Outcome, PolicyRecord, PolicyTag,
    ReserveRequest, Rule, SettleRequest, Settlement, StoredResponse, Token,
};
use redis::aio::ConnectionLike;

static NEXT: AtomicU64 = AtomicU64::new(0);

pub(crate) fn usd(s: &str) -> Usd {
    s.parse().unwrap()
}

/// A policy in a keyspace of its own, so tests never see each other's keys.
pub(crate) struct Fixture<C> {
    pub(crate) ledger: Ledger<C>,
    pub(crate) tag: PolicyTag,
    pub(crate) conn: C,
}

/// One issued key: its token and record.
pub(crate) struct Issued {
    pub(crate) token: Token,
    pub(crate) record: KeyRecord,
}

impl Issued {
    pub(crate) fn id(&self) -> &KeyId {
        &self.token.key_id
    }
}

fn record(token: &Token) -> KeyRecord {
    KeyRecord {
        vendor: Vendor::Stripe,
        vault_key: "billing/run-1".into(),
        vault_key_uid: "uid-test".into(),
        policy: "billing/stripe".into(),
        secret_hash: token.secret_hash(),
        prev_secret_hash: None,
        prev_valid_until_ms: None,
        revoked: false,
        expires_at_ms: None,
        daily_cap: Some(usd("10")),
        total_cap: Some(usd("25")),
        per_call_cap: Some(usd("4")),
        endpoints: vec![
            "POST /v1/payment_intents".parse().unwrap(),
            "GET /v1/customers/*".parse().unwrap(),
        ],
        run_label: "hatchet/billing-agent/run-1".into(),
    }
}

impl<C: ConnectionLike + Clone + Send + Sync> Fixture<C> {
    pub(crate) async fn new(conn: C, config: LedgerConfig) -> Result<Fixture<C>> {
        let prefix = format!(
            "t{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let tag = PolicyTag::of("billing", &prefix);
        let ledger = Ledger::new(conn.clone(), Keyspace::new(&prefix), config);
        ledger.write_policy(&tag, &PolicyRecord::default()).await?;
        Ok(Fixture { ledger, tag, conn })
    }

    pub(crate) async fn issue(&self, edit: impl FnOnce(&mut KeyRecord)) -> Result<Issued> {
        let token = Token::generate(Vendor::Stripe, KeyId::generate(&self.tag));
        let mut record = record(&token);
        edit(&mut record);
        self.ledger.write_key(&token.key_id, &record).await?;
        Ok(Issued { token, record })
    }

    pub(crate) async fn reserve(
        &self,
        key: &Issued,
        path: &str,
        estimate: Usd,
    ) -> Result<Admission> {
        self.reserve_with(key, &key.token.secret_hash(), "POST", path, estimate, None)
            .await
    }

    pub(crate) async fn reserve_with(
        &self,
        key: &Issued,
        secret_hash: &str,
        method: &str,
        path: &str,
        estimate: Usd,
        idem: Option<(&str, &str)>,
    ) -> Result<Admission> {
        Ok(self
            .ledger
            .reserve(&ReserveRequest {
                key_id: key.id(),
                secret_hash,
                method,
                path,
                estimate,
                idempotency: idem,
                read: matches!(method, "GET" | "HEAD"),
                mode: keybrake_ledger::Mode::Reserve,
                owned: &[],
                run_scope: false,
                commits_until_ms: None,
            })
            .await?)
    }

    pub(crate) async fn settle(
        &self,
        key: &Issued,
        reservation: &str,
        outcome: Outcome,
        actual: Usd,
        idem: Option<&str>,
        response: Option<&StoredResponse>,
    ) -> Result<Settlement> {
        self.settle_object(key, reservation, outcome, actual, idem, response, None)
            .await
    }

    #[allow(clippy::too_many_arguments)] // a settle request's parts, as the tests vary them
    pub(crate) async fn settle_object(
        &self,
        key: &Issued,
        reservation: &str,
        outcome: Outcome,
        actual: Usd,
        idem: Option<&str>,
        response: Option<&StoredResponse>,
        object: Option<&str>,
    ) -> Result<Settlement> {
        Ok(self
            .ledger
            .settle(&SettleRequest {
                key_id: key.id(),
                vendor: Some(Vendor::Stripe),
                reservation,
                outcome,
                actual,
                status: Some(200),
                request_id: "req_123",
                idempotency_key: idem,
                response,
                object,
                created: &[],
            })
            .await?)
    }
}

pub(crate) fn granted(a: &Admission) -> String {
    match a {
        Admission::Granted { reservation, .. } => reservation.clone(),
        other => panic!("expected a grant, got {other:?}"),
    }
}

pub(crate) fn refused(a: &Admission) -> Rule {
    match a {
        Admission::Refused(r) => r.rule,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// What a fixture's connection must be: a single node's or a cluster's.
pub(crate) trait Conn: ConnectionLike + Clone + Send + Sync + 'static {}
impl<C: ConnectionLike + Clone + Send + Sync + 'static> Conn for C {}
