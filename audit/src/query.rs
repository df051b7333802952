//! The audit API's query: `namespace`, `key`, `run_label`, `vault_key`, `from`, `to`, `limit`,
//! parsed from a query string with errors that name the parameter. Both sources (PostgreSQL and
//! the Redis streams) answer the same query.

/// A parsed audit query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this key id.
    pub key: Option<String>,
    /// Only this run label.
    pub run_label: Option<String>,
    /// Only this VaultKey (`namespace/name`).
    pub vault_key: Option<String>,
    /// Only keys of this namespace.
    pub namespace: Option<String>,
    /// From (Unix ms).
    pub from_ms: Option<i64>,
    /// To (Unix ms).
    pub to_ms: Option<i64>,
    /// At most this many entries.
    pub limit: usize,
}

fn time_ms(name: &str, v: &str) -> Result<i64, String> {
    if let Ok(ms) = v.parse::<i64>() {
        // A bound no timestamp can hold would be dropped silently by the database query.
        return jiff::Timestamp::from_millisecond(ms)
            .map(|_| ms)
            .map_err(|_| format!("{name}={v:?} is out of range"));
    }
    v.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| format!("{name}={v:?} is neither RFC 3339 nor Unix milliseconds"))
}

/// Parses the query string; errors name the parameter.
pub fn parse(query: Option<&str>) -> Result<AuditQuery, String> {
    let mut q = AuditQuery {
        limit: 1000,
        ..Default::default()
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "key" => q.key = Some(v),
            "run_label" => q.run_label = Some(v),
            "vault_key" => {
                // Its namespace scopes the query (and the caller's authorization).
                match v.split_once('/') {
                    Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {}
                    _ => return Err(format!("vault_key={v:?} must be namespace/name")),
                }
                q.vault_key = Some(v)
            }
            "namespace" => q.namespace = Some(v),
            "from" => q.from_ms = Some(time_ms("from", &v)?),
            "to" => q.to_ms = Some(time_ms("to", &v)?),
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=100_000).contains(n))
                    .ok_or(format!("limit={v:?} must be 1 to 100000"))?
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?}; use namespace, key, run_label, vault_key, from, to, limit"
                ));
            }
        }
    }
    Ok(q)
}

impl AuditQuery {
    /// The namespace the query is confined to, if any: `namespace`, else `vault_key`'s.
    pub fn scope(&self) -> Option<&str> {
        self.namespace.as_deref().or_else(|| {
            self.vault_key
                .as_deref()
                .and_then(|v| v.split_once('/').map(|(ns, _)| ns))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_parameters() {
        let q = parse(Some(
            "run_label=hatchet%2Frun-1&from=2026-11-22T00:00:00Z&to=1764000000000&limit=5",
        ))
        .unwrap();
        assert_eq!(q.run_label.as_deref(), Some("hatchet/run-1"));
        assert_eq!(q.from_ms, Some(1_795_305_600_000));
        assert_eq!(q.to_ms, Some(1_764_000_000_000));
        assert_eq!(q.limit, 5);
        assert!(parse(Some("from=yesterday")).unwrap_err().contains("from"));
        assert!(
            parse(Some("vault_key=run-1"))
                .unwrap_err()
                .contains("namespace/name")
        );
        assert!(
            parse(Some("to=99999999999999999"))
                .unwrap_err()
                .contains("out of range")
        );
        assert!(parse(Some("limit=0")).unwrap_err().contains("limit"));
        assert!(
            parse(Some("runlabel=x"))
                .unwrap_err()
                .contains("unknown parameter \"runlabel\"")
        );
    }
}
