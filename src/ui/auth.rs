//! Who may use the console: the login (one password, compared in constant
//! time), sessions (a random id in an `HttpOnly; SameSite=Strict` cookie),
//! a CSRF token per session that every POST must carry, a limit on failed
//! logins, and — where no login is asked (a loopback listener without a
//! password) — a check that the `Host` is this machine's, so a web page
//! elsewhere cannot reach the console through DNS rebinding.
//!
//! The checks are pure functions; [`Sessions`] is the one small store,
//! bounded by [`MAX_SESSIONS`]. Nothing here logs or returns the password.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rand::RngCore;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use crate::secret::SecretSource;

/// The session cookie's name.
pub const COOKIE: &str = "mqtt_ha_gateway_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions kept at most (the least recently used go first).
pub const MAX_SESSIONS: usize = 64;
/// A session unused this long is gone.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Failed logins allowed per [`FAILURE_WINDOW`]; more are refused unchecked (429).
pub const MAX_FAILURES: usize = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// `given` is the password, in time that depends on `given`'s length only
/// (not on the password's content or length). `expected` is never empty
/// (config refuses an empty password).
pub fn password_matches(expected: &[u8], given: &[u8]) -> bool {
    if expected.is_empty() {
        return false;
    }
    let mut same = (expected.len() as u64).ct_eq(&(given.len() as u64));
    for (i, b) in given.iter().enumerate() {
        same &= b.ct_eq(&expected[i % expected.len()]);
    }
    same.into()
}

/// The CSRF header matches the session's token (constant time).
pub fn csrf_matches(expected: &str, given: Option<&str>) -> bool {
    given.is_some_and(|g| g.len() == expected.len() && bool::from(g.as_bytes().ct_eq(expected.as_bytes())))
}

/// A `Host` header naming this machine (`localhost`, `127.0.0.1`, `[::1]`,
/// with or without a port).
pub fn is_local_host(host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().map(|h| format!("[{h}]")).unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default().to_owned(),
    };
    matches!(name.to_ascii_lowercase().as_str(), "localhost" | "127.0.0.1" | "[::1]")
}

/// The session id in a `Cookie` header, if any.
pub fn session_cookie(header: Option<&str>) -> Option<&str> {
    header?
        .split(';')
        .map(str::trim)
        .find_map(|kv| kv.strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value for a session (`None`: clears it).
pub fn set_cookie(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict"),
        None => format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

/// 32 random bytes, hex: a session id or a CSRF token.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug)]
struct Session {
    csrf: String,
    last_used: Instant,
}

/// Logged-in (or, without a password, simply opened) sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: HashMap<String, Session>,
}

impl Sessions {
    /// A new session: (id, CSRF token).
    pub fn open(&mut self, now: Instant) -> (String, String) {
        self.by_id.retain(|_, s| now.duration_since(s.last_used) < IDLE);
        while self.by_id.len() >= MAX_SESSIONS {
            let oldest = self.by_id.iter().min_by_key(|(_, s)| s.last_used).map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.by_id.remove(&id);
            }
        }
        let (id, csrf) = (random_token(), random_token());
        self.by_id.insert(id.clone(), Session { csrf: csrf.clone(), last_used: now });
        (id, csrf)
    }

    /// The session's CSRF token, if `id` is a live session (it is used now).
    pub fn touch(&mut self, id: &str, now: Instant) -> Option<String> {
        let s = self.by_id.get_mut(id)?;
        if now.duration_since(s.last_used) >= IDLE {
            self.by_id.remove(id);
            return None;
        }
        s.last_used = now;
        Some(s.csrf.clone())
    }

    pub fn close(&mut self, id: &str) {
        self.by_id.remove(id);
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Failed logins in the last [`FAILURE_WINDOW`].
#[derive(Debug, Default)]
pub struct Failures {
    at: VecDeque<Instant>,
}

impl Failures {
    /// Whether a login may be tried at `now`.
    pub fn may_try(&mut self, now: Instant) -> bool {
        while self.at.front().is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW) {
            self.at.pop_front();
        }
        self.at.len() < MAX_FAILURES
    }

    pub fn failed(&mut self, now: Instant) {
        self.at.push_back(now);
        if self.at.len() > MAX_FAILURES {
            self.at.pop_front();
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("login required")]
    Login,
    #[error("csrf token missing or wrong")]
    Csrf,
    #[error("without a password the console answers only to localhost, 127.0.0.1 or [::1] as host")]
    Host,
    #[error("too many failed logins; wait a minute")]
    TooMany,
}

/// The console's gate: the password (if any), the sessions, the failures.
#[derive(Debug)]
pub struct Auth {
    password: Option<SecretSource>,
    state: std::sync::Mutex<(Sessions, Failures)>,
}

/// The request facts the gate looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub host: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub csrf: Option<&'a str>,
    /// `Authorization: Bearer …` (scripts use the password as a token).
    pub bearer: Option<&'a str>,
    /// A POST: it must carry the session's CSRF token.
    pub changes: bool,
}

impl Auth {
    pub fn new(password: Option<SecretSource>) -> Self {
        Self { password, state: Default::default() }
    }

    pub fn login_required(&self) -> bool {
        self.password.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Sessions, Failures)> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `given` is the password (read now: a changed file counts at once).
    fn is_password(&self, given: &str) -> bool {
        let Some(source) = &self.password else { return false };
        match source.read() {
            Ok(p) => password_matches(p.expose_secret().as_bytes(), given.as_bytes()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read ui.password_file; refusing logins");
                false
            }
        }
    }

    /// Checks a request to the API (the login itself excepted).
    pub fn check(&self, r: &Request<'_>, now: Instant) -> Result<(), Refused> {
        if !self.login_required() && !is_local_host(r.host) {
            return Err(Refused::Host);
        }
        if let Some(token) = r.bearer {
            // Not a cookie: no browser sends it by itself, so no CSRF check.
            return if self.login_required() && self.is_password(token) { Ok(()) } else { Err(Refused::Login) };
        }
        let csrf = r.cookie.and_then(|id| self.lock().0.touch(id, now));
        match csrf {
            None if self.login_required() || r.changes => Err(Refused::Login),
            None => Ok(()),
            Some(_) if !r.changes => Ok(()),
            Some(expected) if csrf_matches(&expected, r.csrf) => Ok(()),
            Some(_) => Err(Refused::Csrf),
        }
    }

    /// The session of this request (`cookie`), its CSRF token; `None` when there is none.
    pub fn session(&self, cookie: Option<&str>, now: Instant) -> Option<String> {
        cookie.and_then(|id| self.lock().0.touch(id, now))
    }

    /// A session without a password (loopback only): (id, csrf).
    pub fn open_without_login(&self, host: Option<&str>, now: Instant) -> Result<(String, String), Refused> {
        if self.login_required() {
            return Err(Refused::Login);
        }
        if !is_local_host(host) {
            return Err(Refused::Host);
        }
        Ok(self.lock().0.open(now))
    }

    /// A login attempt: a new session (id, csrf) if `password` is right.
    pub fn login(&self, password: &str, now: Instant) -> Result<(String, String), Refused> {
        if !self.lock().1.may_try(now) {
            return Err(Refused::TooMany);
        }
        if self.is_password(password) {
            return Ok(self.lock().0.open(now));
        }
        self.lock().1.failed(now);
        Err(Refused::Login)
    }

    pub fn logout(&self, cookie: Option<&str>) {
        if let Some(id) = cookie {
            self.lock().0.close(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn passwords_are_compared_whole() {
        let table: &[(&str, &str, bool)] = &[
            ("hunter2", "hunter2", true),
            ("hunter2", "hunter", false),
            ("hunter2", "hunter22", false),
            ("hunter2", "Hunter2", false),
            ("hunter2", "", false),
            ("ab", "abab", false),
            ("", "", false),
        ];
        for (expected, given, want) in table {
            assert_eq!(password_matches(expected.as_bytes(), given.as_bytes()), *want, "{expected:?} vs {given:?}");
        }
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let table = [(Some("abc"), true), (Some("abd"), false), (Some("ab"), false), (None, false), (Some(""), false)];
        for (given, want) in table {
            assert_eq!(csrf_matches("abc", given), want, "{given:?}");
        }
    }

    #[test]
    fn only_this_machines_names_are_local_hosts() {
        let table = [
            (Some("localhost:9184"), true),
            (Some("127.0.0.1:9184"), true),
            (Some("127.0.0.1"), true),
            (Some("[::1]:9184"), true),
            (Some("LOCALHOST"), true),
            (Some("evil.example:9184"), false),
            (Some("127.0.0.2:9184"), false),
            (Some("localhost.evil.example"), false),
            (None, false),
        ];
        for (host, want) in table {
            assert_eq!(is_local_host(host), want, "{host:?}");
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let table = [
            (Some("a=1; mqtt_ha_gateway_session=xyz; b=2"), Some("xyz")),
            (Some("mqtt_ha_gateway_session="), None),
            (Some("other_mqtt_ha_gateway_session=no"), None),
            (None, None),
        ];
        for (header, want) in table {
            assert_eq!(session_cookie(header), want, "{header:?}");
        }
        assert!(set_cookie(Some("x")).contains("HttpOnly; SameSite=Strict"));
    }

    fn request<'a>(cookie: Option<&'a str>, csrf: Option<&'a str>, changes: bool) -> Request<'a> {
        Request { host: Some("127.0.0.1:1"), cookie, csrf, bearer: None, changes }
    }

    /// (password set?, request) → allowed or why not.
    #[tokio::test(start_paused = true)]
    async fn the_gate_wants_a_session_and_its_csrf_token_for_changes() {
        for with_password in [false, true] {
            let password = with_password.then(|| SecretSource::Inline(SecretString::from("pw")));
            let auth = Auth::new(password);
            let now = Instant::now();
            let (id, csrf) = if with_password {
                assert_eq!(auth.login("nope", now), Err(Refused::Login));
                auth.login("pw", now).unwrap()
            } else {
                auth.open_without_login(Some("localhost"), now).unwrap()
            };
            let read_anonymous = if with_password { Err(Refused::Login) } else { Ok(()) };
            let table = [
                (request(None, None, false), read_anonymous),
                (request(Some(&id), None, false), Ok(())),
                (request(None, Some(&csrf), true), Err(Refused::Login)),
                (request(Some(&id), None, true), Err(Refused::Csrf)),
                (request(Some(&id), Some("wrong"), true), Err(Refused::Csrf)),
                (request(Some(&id), Some(&csrf), true), Ok(())),
                (request(Some("forged"), Some(&csrf), true), Err(Refused::Login)),
            ];
            for (r, want) in table {
                assert_eq!(auth.check(&r, now), want, "password {with_password}: {r:?}");
            }
            let bearer = Request { bearer: Some("pw"), changes: true, ..request(None, None, true) };
            let want = if with_password { Ok(()) } else { Err(Refused::Login) };
            assert_eq!(auth.check(&bearer, now), want, "the password as a bearer token");
            // Idle sessions expire.
            tokio::time::advance(IDLE).await;
            assert_eq!(auth.session(Some(&id), Instant::now()), None);
        }
    }

    #[test]
    fn without_a_password_only_local_hosts_are_served() {
        let auth = Auth::new(None);
        let now = Instant::now();
        let r = Request { host: Some("rebound.example:9184"), ..Request::default() };
        assert_eq!(auth.check(&r, now), Err(Refused::Host));
        assert_eq!(auth.open_without_login(Some("rebound.example"), now), Err(Refused::Host));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_logins_are_limited_per_minute() {
        let auth = Auth::new(Some(SecretSource::Inline(SecretString::from("pw"))));
        for _ in 0..MAX_FAILURES {
            assert_eq!(auth.login("guess", Instant::now()), Err(Refused::Login));
        }
        assert_eq!(auth.login("pw", Instant::now()), Err(Refused::TooMany), "even the right one, unchecked");
        tokio::time::advance(FAILURE_WINDOW).await;
        assert!(auth.login("pw", Instant::now()).is_ok());
    }

    #[test]
    fn sessions_are_bounded() {
        let mut s = Sessions::default();
        let now = Instant::now();
        let first = s.open(now).0;
        for _ in 0..MAX_SESSIONS * 2 {
            s.open(now + Duration::from_secs(1));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.touch(&first, now + Duration::from_secs(2)).is_none(), "the least recently used went first");
    }
}
