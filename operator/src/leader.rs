//! Leader election on a coordination.k8s.io Lease, the client-go way: the holder renews
//! `renewTime`; anyone may take over a Lease not renewed for `leaseDurationSeconds`. Every
//! write carries the resourceVersion it read, so two replicas can never both win.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::info;

/// What one attempt on the Lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// This replica holds it now.
    Held,
    /// Another replica holds it and has renewed it in time.
    HeldByAnother,
    /// The API server failed or was too slow to answer.
    Failed,
}

/// A Lease-based leader elector.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl Elector {
    /// An elector for the Lease `namespace/name` as `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// One attempt to acquire or renew; true when this replica holds the Lease afterwards.
    pub async fn try_acquire(&self) -> kube::Result<bool> {
        let spec = |acquire: Option<MicroTime>, transitions: i32| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: acquire,
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(spec(Some(now()), 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let mine = current.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = current.renew_time.as_ref().is_none_or(|t| {
            let held =
                Duration::from_secs(current.lease_duration_seconds.unwrap_or(0).max(0) as u64);
            jiff::Timestamp::now().duration_since(t.0).as_secs_f64() > held.as_secs_f64()
        });
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquire = if mine {
            current.acquire_time
        } else {
            Some(now())
        };
        lease.spec = Some(spec(acquire, transitions));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One attempt, given a third of the Lease at most: a slow API server must not keep a
    /// replica waiting past the point where another may take over.
    async fn attempt(&self) -> Attempt {
        match tokio::time::timeout(self.duration / 3, self.try_acquire()).await {
            Ok(Ok(true)) => Attempt::Held,
            Ok(Ok(false)) => Attempt::HeldByAnother,
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.name, error = %e, "a lease attempt failed");
                Attempt::Failed
            }
            Err(_) => {
                tracing::warn!(lease = %self.name, "a lease attempt timed out");
                Attempt::Failed
            }
        }
    }

    /// Waits until this replica holds the Lease (retrying through API errors).
    pub async fn acquire(&self) {
        loop {
            if self.attempt().await == Attempt::Held {
                info!(lease = %self.name, identity = %self.identity, "became leader");
                return;
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews until no renewal has succeeded for two thirds of the Lease (client-go's renew
    /// deadline); then returns, and the caller must stop acting as leader. Stepping down a third
    /// of the Lease before a standby may take over leaves room for clock skew and for the
    /// renewal that was in flight.
    pub async fn hold(&self) {
        let deadline = self.duration * 2 / 3;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 6).await;
            // Never past the deadline, even while an attempt hangs: at most 5/6 of the Lease.
            let left = deadline.saturating_sub(last_ok.elapsed());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(left, self.attempt()).await {
                Ok(Attempt::Held) => last_ok = tokio::time::Instant::now(),
                Ok(Attempt::HeldByAnother) | Err(_) => return,
                Ok(Attempt::Failed) => {}
            }
        }
    }
}
