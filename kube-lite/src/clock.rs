//! The server's clock, as it stamps `creationTimestamp` and other times: RFC 3339, whole
//! seconds. Its own module, so the write path and the built-in kinds' rules both use it.

/// RFC 3339 now, as the server stamps times.
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or(jiff::Timestamp::now())
        .to_string()
}
