//! The token and the gate that stops us sending it after HA refused it.
//!
//! Home Assistant counts every 401 as a failed login and can ban the
//! gateway's IP. After a refusal the gate closes: nothing is sent until the
//! token changes (file re-read) or, after a growing pause, one probe call is
//! let through; its success reopens the gate for everyone.

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

impl AuthGate {
    /// `pause` is the wait after the first refusal; it doubles up to ten times that.
    pub fn new(pause: Duration, token: watch::Receiver<SecretString>) -> Self {
        let pause = Backoff::try_new(pause, pause * 10).expect("a validated auth_backoff is non-zero");
        Self {
            inner: Arc::new(Mutex::new(Inner { state: State::Open, failures: 0 })),
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

    /// Waits until the caller may send, or `deadline` passes.
    pub async fn wait_open(&self, deadline: Instant) -> Result<(), GateClosed> {
        let mut token = self.token.clone();
        loop {
            let notified = self.changed.notified();
            let wake = {
                let mut inner = self.lock();
                match inner.state {
                    State::Open => return Ok(()),
                    State::Closed { until } if Instant::now() >= until => {
                        inner.state = State::Probing;
                        return Ok(());
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
        g.wait_open(far).await.unwrap();
        g.refused();
        let start = Instant::now();
        // First caller waits for the pause and becomes the probe.
        g.wait_open(far).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        // A second caller waits for the probe's answer (here: until its deadline).
        let soon = Instant::now() + Duration::from_secs(5);
        assert_eq!(g.wait_open(soon).await, Err(GateClosed));
        // The probe is refused again: the pause doubles.
        g.refused();
        let start = Instant::now();
        g.wait_open(far).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        g.accepted();
        assert!(g.is_open());
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
        waiter.await.unwrap().unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(g.is_open());
    }
}
