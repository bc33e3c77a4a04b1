//! How a call to Home Assistant failed, classified once, by kind.
//!
//! Nothing downstream parses error strings: the dispatcher matches on
//! [`HaErrorKind`] and asks [`HaError::retry`] what to do.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaErrorKind {
    /// 400, 404, 405, 413, 422…: the call itself is wrong. Never retried.
    Rejected,
    /// 401/403: the token is not accepted. Stop sending until it changes or a
    /// slow probe succeeds: HA bans IPs after repeated failed logins.
    Unauthorized,
    /// 429: HA (or a proxy) asks us to slow down.
    RateLimited,
    /// 5xx.
    Server,
    /// The connection could not be made: the request was never sent.
    Connect,
    /// HA's TLS certificate was refused (wrong `ca_file`, name mismatch):
    /// the request was never sent, and retrying cannot help.
    Tls,
    /// No answer in time: the call may be running in HA.
    Timeout,
    /// The connection broke after the request may have been sent.
    Transport,
    /// 2xx with a body that is not the expected JSON list.
    InvalidResponse,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("home assistant call failed ({kind:?}{}): {message}", .status.map(|s| format!(", status {s}")).unwrap_or_default())]
pub struct HaError {
    pub kind: HaErrorKind,
    pub status: Option<u16>,
    /// From a `Retry-After` header, when HA or a proxy sent one.
    pub retry_after: Option<Duration>,
    pub message: String,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Final: report it.
    No,
    /// Try again after the backoff (or `Retry-After`, whichever is longer).
    Backoff,
    /// Wait for the auth gate to reopen, then try again.
    AfterAuth,
}

impl HaError {
    pub fn new(kind: HaErrorKind, status: Option<u16>, message: impl Into<String>) -> Self {
        Self { kind, status, retry_after: None, message: message.into() }
    }

    /// The kind for an HTTP status that is not 2xx.
    pub fn kind_for_status(status: u16) -> HaErrorKind {
        match status {
            401 | 403 => HaErrorKind::Unauthorized,
            429 => HaErrorKind::RateLimited,
            500..=599 => HaErrorKind::Server,
            _ => HaErrorKind::Rejected,
        }
    }

    /// Whether and how to retry, given whether the call is idempotent: a call
    /// that may already be running in HA is re-sent only if that is harmless.
    pub fn retry(&self, idempotent: bool) -> Retry {
        match self.kind {
            HaErrorKind::Rejected | HaErrorKind::InvalidResponse | HaErrorKind::Tls => Retry::No,
            HaErrorKind::Unauthorized => Retry::AfterAuth,
            HaErrorKind::RateLimited | HaErrorKind::Server | HaErrorKind::Connect => Retry::Backoff,
            HaErrorKind::Timeout | HaErrorKind::Transport if idempotent => Retry::Backoff,
            HaErrorKind::Timeout | HaErrorKind::Transport => Retry::No,
        }
    }
}

/// Parses `Retry-After` in seconds (HTTP dates are rare from HA; ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs).map(|d| d.min(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use HaErrorKind::*;

    #[test]
    fn statuses_classify() {
        let table = [
            (400, Rejected),
            (404, Rejected),
            (413, Rejected),
            (401, Unauthorized),
            (403, Unauthorized),
            (429, RateLimited),
            (500, Server),
            (503, Server),
        ];
        for (status, kind) in table {
            assert_eq!(HaError::kind_for_status(status), kind, "{status}");
        }
    }

    #[test]
    fn retry_decisions() {
        // (kind, idempotent, expected)
        let table = [
            (Rejected, true, Retry::No),
            (Unauthorized, false, Retry::AfterAuth),
            (RateLimited, false, Retry::Backoff),
            (Server, false, Retry::Backoff),
            (Connect, false, Retry::Backoff),
            (Timeout, true, Retry::Backoff),
            (Timeout, false, Retry::No),
            (Transport, false, Retry::No),
            (Transport, true, Retry::Backoff),
            (InvalidResponse, true, Retry::No),
            (Tls, true, Retry::No),
        ];
        for (kind, idempotent, expected) in table {
            assert_eq!(HaError::new(kind, None, "").retry(idempotent), expected, "{kind:?} {idempotent}");
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("100000"), Some(Duration::from_secs(300)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
