//! The token and the gate that stops us sending it after HA refused it.
//!
//! Home Assistant counts every 401 as a failed login and can ban the
//! gateway's IP. After a refusal the gate closes: nothing is sent until the
//! token changes (file re-read) or, after a growing pause, one probe call is
//! let through; its success reopens the gate for everyone.
//!
//! The probe role is a value, [`Pass`]: whoever holds it is the one caller
//! allowed through a closed gate, and dropping it without an answer from HA
//! (the command expired in the rate-limit wait, shutdown came, the websocket
//! could not connect) hands the role back, so the next caller probes at once.
//! Nothing has to remember to clear it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::backoff::Backoff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Closed {
        until: Instant,
    },
    /// One caller is probing; the others wait for its answer.
    Probing,
}

#[derive(Debug)]
struct Inner {
    state: State,
    failures: u32,
    /// Counts probe roles handed out, so a stale [`Pass`] cannot end a newer probe.
    probes: u64,
}

/// Shared by every call to HA.
#[derive(Debug, Clone)]
pub struct AuthGate {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    pause: Backoff,
    token: watch::Receiver<SecretString>,
}

/// Why a caller may not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateClosed;

/// Leave to send, held for as long as the call it allows. When it carries
/// the probe role and is dropped before HA answered (no `accepted`,
/// `refused` or `inconclusive` since), the role goes back to the gate.
#[must_use = "the pass must be held until HA answered the call it allows"]
#[derive(Debug)]
pub struct Pass {
    probe: Option<ProbeRole>,
}

impl Pass {
    /// Whether this caller is the probe after a refusal.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

#[derive(Debug)]
struct ProbeRole {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    number: u64,
}

impl Drop for ProbeRole {
    fn drop(&mut self) {
        // A poisoned lock only means a panic elsewhere; the state is still plain data.
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.state == State::Probing && inner.probes == self.number {
            // Nothing was learnt: the next caller may probe at once.
            inner.state = State::Closed { until: Instant::now() };
            drop(inner);
            self.changed.notify_waiters();
        }
    }
}

impl AuthGate {
    /// `pause` is the wait after the first refusal; it doubles up to ten times that.
    pub fn new(pause: Duration, token: watch::Receiver<SecretString>) -> Self {
        let pause = Backoff::try_new(pause, pause * 10).expect("a validated auth_backoff is non-zero");
        Self {
            inner: Arc::new(Mutex::new(Inner { state: State::Open, failures: 0, probes: 0 })),
            changed: Arc::new(Notify::new()),
            pause,
            token,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("auth gate lock is never poisoned: no panics under it")
    }

    /// The token to send now.
    pub fn token(&self) -> SecretString {
        self.token.borrow().clone()
    }

    /// Whether the last answer accepted the token.
    pub fn is_open(&self) -> bool {
        self.lock().state == State::Open
    }

    /// Waits until the caller may send, or `deadline` passes. Hold the
    /// [`Pass`] until HA has answered.
    pub async fn wait_open(&self, deadline: Instant) -> Result<Pass, GateClosed> {
        let mut token = self.token.clone();
        loop {
            let notified = self.changed.notified();
            let wake = {
                let mut inner = self.lock();
                match inner.state {
                    State::Open => return Ok(Pass { probe: None }),
                    State::Closed { until } if Instant::now() >= until => {
                        inner.state = State::Probing;
                        inner.probes += 1;
                        let role = ProbeRole {
                            inner: Arc::clone(&self.inner),
                            changed: Arc::clone(&self.changed),
                            number: inner.probes,
                        };
                        return Ok(Pass { probe: Some(role) });
                    }
                    State::Closed { until } => until.min(deadline),
                    State::Probing => deadline,
                }
            };
            if Instant::now() >= deadline {
                return Err(GateClosed);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
                Ok(()) = token.changed() => self.reset(),
            }
        }
    }

    /// HA accepted the token.
    pub fn accepted(&self) {
        let mut inner = self.lock();
        if inner.state != State::Open {
            tracing::info!("home assistant accepts the token again; sending resumes");
        }
        inner.state = State::Open;
        inner.failures = 0;
        drop(inner);
        self.changed.notify_waiters();
    }

    /// HA refused the token: close the gate for a growing pause.
    pub fn refused(&self) {
        let mut inner = self.lock();
        let pause = self.pause.ceiling(inner.failures);
        inner.failures = inner.failures.saturating_add(1);
        inner.state = State::Closed { until: Instant::now() + pause };
        tracing::warn!(
            pause_secs = pause.as_secs(),
            "home assistant refused the token (401/403); nothing is sent until the token changes or the pause ends"
        );
        drop(inner);
        self.changed.notify_waiters();
    }

    /// A probe got no answer (connection error): close again for the same
    /// pause, without counting it as a refusal.
    pub fn inconclusive(&self) {
        let mut inner = self.lock();
        if inner.state == State::Probing {
            let pause = self.pause.ceiling(inner.failures.saturating_sub(1));
            inner.state = State::Closed { until: Instant::now() + pause };
            drop(inner);
            self.changed.notify_waiters();
        }
    }

    /// The token changed: try it at once.
    pub fn reset(&self) {
        let mut inner = self.lock();
        if inner.state != State::Open {
            inner.state = State::Open;
            inner.failures = 0;
            tracing::info!("token changed; sending resumes");
        }
        drop(inner);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> (AuthGate, watch::Sender<SecretString>) {
        let (tx, rx) = watch::channel(SecretString::from("t1"));
        (AuthGate::new(Duration::from_secs(30), rx), tx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_closes_the_gate_then_one_probe_goes() {
        let (g, _tx) = gate();
        let far = Instant::now() + Duration::from_secs(3600);
        drop(g.wait_open(far).await.unwrap());
        g.refused();
        let start = Instant::now();
        // First caller waits for the pause and becomes the probe.
        let probe = g.wait_open(far).await.unwrap();
        assert!(probe.is_probe());
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        // A second caller waits for the probe's answer (here: until its deadline).
        let soon = Instant::now() + Duration::from_secs(5);
        assert_eq!(g.wait_open(soon).await.err(), Some(GateClosed));
        // The probe is refused again: the pause doubles.
        g.refused();
        drop(probe);
        let start = Instant::now();
        let probe = g.wait_open(far).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        g.accepted();
        drop(probe);
        assert!(g.is_open());
    }

    /// The probe's caller can give up before calling HA (its command expired
    /// in the rate-limit wait, shutdown came): the role must come back, or
    /// every later caller would wait for an answer that never comes.
    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_calls_hands_its_role_back() {
        let (g, _tx) = gate();
        let far = Instant::now() + Duration::from_secs(3600);
        g.refused();
        {
            let _probe = g.wait_open(far).await.unwrap();
            // Dropped here without accepted(), refused() or inconclusive().
        }
        let soon = Instant::now() + Duration::from_secs(5);
        let start = Instant::now();
        let _next = g.wait_open(soon).await.expect("the next caller becomes the probe");
        assert_eq!(start.elapsed(), Duration::ZERO, "no pause: nothing was sent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_token_reopens_at_once() {
        let (g, tx) = gate();
        g.refused();
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.wait_open(Instant::now() + Duration::from_secs(3600)).await })
        };
        tokio::task::yield_now().await;
        let start = Instant::now();
        tx.send(SecretString::from("t2")).unwrap();
        drop(waiter.await.unwrap().unwrap());
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(g.is_open());
    }
}
