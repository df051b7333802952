//! Tables of requests the proxy must refuse: each row says what it tries, how it is refused,
//! and in which words, so the next attack is one more row.

use std::net::SocketAddr;

use anyhow::{Result, ensure};

use crate::{Reply, http};

/// One request the proxy must refuse.
pub struct Refusal<'a> {
    /// What the request tries, for the failure message.
    pub why: &'a str,
    /// The method.
    pub method: &'a str,
    /// The path and query.
    pub path: &'a str,
    /// Headers after the table's own (an `Authorization` header, say).
    pub headers: Vec<(&'a str, &'a str)>,
    /// The body.
    pub body: Vec<u8>,
    /// The refusal's status.
    pub status: u16,
    /// Words the refusal's body must contain (empty: any).
    pub says: &'a str,
}

/// A row: `why`, then the request, then the status it must get.
pub fn refusal<'a>(
    why: &'a str,
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Refusal<'a> {
    Refusal {
        why,
        method,
        path,
        headers,
        body: body.into(),
        status,
        says: "",
    }
}

impl<'a> Refusal<'a> {
    /// The refusal must also contain `words`.
    pub fn saying(mut self, words: &'a str) -> Refusal<'a> {
        self.says = words;
        self
    }

    /// Sends the request to `addr` with `first` headers before the row's own, and checks the
    /// refusal.
    pub async fn check(&self, addr: SocketAddr, first: &[(&str, &str)]) -> Result<Reply> {
        let mut headers = first.to_vec();
        headers.extend_from_slice(&self.headers);
        let reply = http(addr, self.method, self.path, &headers, &self.body).await?;
        ensure!(
            reply.status == self.status,
            "{}: answered {} instead of {}: {}",
            self.why,
            reply.status,
            self.status,
            reply.body
        );
        ensure!(
            reply.body.contains(self.says),
            "{}: the refusal does not say {:?}: {}",
            self.why,
            self.says,
            reply.body
        );
        Ok(reply)
    }
}

/// Checks every row of `table`, in order.
pub async fn check_all(
    addr: SocketAddr,
    first: &[(&str, &str)],
    table: &[Refusal<'_>],
) -> Result<Vec<Reply>> {
    let mut replies = Vec::with_capacity(table.len());
    for row in table {
        replies.push(row.check(addr, first).await?);
    }
    Ok(replies)
}
