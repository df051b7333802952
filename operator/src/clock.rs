//! The operator's clock is Redis' (`TIME`, read through the ledger), the same clock the proxy's
//! scripts check expiry against; this turns its milliseconds into status times.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Unix milliseconds as a status time, in whole seconds as Kubernetes keeps them
/// (out-of-range values clamp to the epoch).
pub fn time(ms: i64) -> Time {
    Time(jiff::Timestamp::from_second(ms.div_euclid(1000)).unwrap_or_default())
}

/// This host's clock in Unix milliseconds, for the one status time Redis cannot give: the
/// condition saying Redis cannot be reached.
pub fn local_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}
