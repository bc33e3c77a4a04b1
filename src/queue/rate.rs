//! Token bucket: at most `rate` calls per second on average, `burst` at once.
//!
//! Reservation style: every caller takes a token now and is told how long to
//! wait for it, so waiters are served in the order they asked, and the
//! arithmetic is a pure function of `tokio::time::Instant` (tests pause time).
//! A caller that gives up before its slot (its command expired, shutdown)
//! releases its token, or the bucket would stay in debt by every token
//! reserved and never used: after a flood of expiring commands every later
//! command waited up to `queue.max_age`.
//!
//! Written here rather than taken from `governor` because governor keeps its
//! own clock, which paused tokio time cannot drive.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// May go negative: tokens promised to waiters.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: NonZeroU32, burst: NonZeroU32, now: Instant) -> Self {
        let burst = f64::from(burst.get());
        Self { rate: f64::from(rate.get()), burst, tokens: burst, last: now }
    }

    /// Takes one token; returns how long the caller must wait before using it.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Gives back a token that was reserved and will not be used (its
    /// caller expired or is shutting down before its slot): the next
    /// caller may take that slot. Waits already promised do not change.
    pub fn release(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }
}

/// A shared limiter; `None` rate = unlimited. A `429 Too Many Requests`
/// pauses it for every caller, not only the one that was refused.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Option<Mutex<TokenBucket>>,
    /// No call starts before this instant (HA or a proxy said "slow down").
    paused_until: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(rate: Option<NonZeroU32>, burst: NonZeroU32) -> Self {
        Self {
            bucket: rate.map(|r| Mutex::new(TokenBucket::new(r, burst, Instant::now()))),
            paused_until: Mutex::new(None),
        }
    }

    /// How long the caller must wait for its call slot (zero when unlimited
    /// and not paused).
    pub fn reserve(&self) -> Duration {
        self.reserve_at(Instant::now())
    }

    fn reserve_at(&self, now: Instant) -> Duration {
        let paused = self
            .paused_until
            .lock()
            .expect("no panics under the pause lock")
            .map(|until| until.saturating_duration_since(now));
        let slot = match &self.bucket {
            None => Duration::ZERO,
            Some(b) => b.lock().expect("bucket lock is never poisoned: no panics under it").reserve(now),
        };
        slot.max(paused.unwrap_or_default())
    }

    /// Gives back the token of a [`reserve`](Self::reserve) whose caller
    /// will not call after all.
    pub fn release(&self) {
        if let Some(b) = &self.bucket {
            b.lock().expect("bucket lock is never poisoned: no panics under it").release(Instant::now());
        }
    }

    /// Starts no call for `pause` from now (a longer pause already set stays).
    pub fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut current = self.paused_until.lock().expect("no panics under the pause lock");
        if current.is_none_or(|c| c < until) {
            *current = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(nz(10), nz(3), t0);
        let ms = Duration::from_millis;
        // (time since t0 in ms, expected wait in ms)
        let table = [(0, 0), (0, 0), (0, 0), (0, 100), (0, 200), (300, 0), (300, 100)];
        for (at, wait) in table {
            let got = b.reserve(t0 + ms(at));
            assert!((got.as_secs_f64() - ms(wait).as_secs_f64()).abs() < 1e-9, "at {at}: {got:?} != {wait}ms");
        }
    }

    /// (reservations at ms, a release at ms, then reservations at ms) →
    /// their waits in ms; rate 2/s, burst 1.
    #[test]
    fn a_released_token_shortens_the_next_wait() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        type Row = (&'static [u64], Option<u64>, &'static [u64], &'static [u64]);
        let table: [Row; 4] = [
            (&[0, 0], None, &[500], &[500]),
            (&[0, 0], Some(100), &[500], &[0]), // one given back: its slot is free
            (&[0, 0, 0], Some(0), &[500], &[500]),
            (&[0], Some(200), &[200, 200], &[0, 500]), // a full bucket, never more than burst
        ];
        for (reserved, released, then, waits) in table {
            let mut b = TokenBucket::new(nz(2), nz(1), t0);
            for at in reserved {
                b.reserve(t0 + ms(*at));
            }
            if let Some(at) = released {
                b.release(t0 + ms(at));
            }
            for (at, wait) in then.iter().zip(waits) {
                let got = b.reserve(t0 + ms(*at));
                assert!(
                    (got.as_secs_f64() - ms(*wait).as_secs_f64()).abs() < 1e-9,
                    "{reserved:?}, released at {released:?}, at {at}: {got:?} != {wait}ms"
                );
            }
        }
    }

    #[test]
    fn idle_time_refills_at_most_to_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(nz(1), nz(2), t0);
        b.reserve(t0);
        b.reserve(t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later), Duration::from_secs(1));
    }

    #[test]
    fn unlimited_never_waits() {
        let l = RateLimiter::new(None, nz(1));
        assert!((0..1000).all(|_| l.reserve().is_zero()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_caller_and_ends() {
        let l = RateLimiter::new(None, nz(1));
        l.pause(Duration::from_secs(2));
        l.pause(Duration::from_secs(1));
        assert_eq!(l.reserve(), Duration::from_secs(2), "the longer pause stays");
        assert_eq!(l.reserve(), Duration::from_secs(2), "for every caller");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(l.reserve(), Duration::from_millis(500));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.reserve().is_zero(), "over");
    }

    #[tokio::test(start_paused = true)]
    async fn n_calls_take_the_time_the_rate_says() {
        let l = RateLimiter::new(Some(nz(20)), nz(40));
        let start = Instant::now();
        for _ in 0..240 {
            tokio::time::sleep(l.reserve()).await;
        }
        // 40 from the burst, 200 at 20/s = 10 s.
        assert_eq!(start.elapsed().as_millis(), 10_000);
    }
}
