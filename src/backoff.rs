//! Jittered exponential backoff, shared by MQTT reconnects and HA retries.
//!
//! Pure arithmetic: the caller sleeps. An invalid policy (min > max, zero)
//! cannot be constructed.

use std::time::Duration;

/// Exponential backoff from `min` doubling up to `max`, with "equal jitter":
/// the delay for attempt `n` lies in `[d/2, d]` where `d = min(max, min·2ⁿ)`,
/// so a fleet of clients does not retry in lockstep yet never retries at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    #[error("backoff delays must be greater than zero")]
    Zero,
    #[error("the shortest backoff ({min:?}) is longer than the longest ({max:?})")]
    MinAboveMax { min: Duration, max: Duration },
}

impl Backoff {
    pub fn try_new(min: Duration, max: Duration) -> Result<Self, BackoffError> {
        if min.is_zero() || max.is_zero() {
            return Err(BackoffError::Zero);
        }
        if min > max {
            return Err(BackoffError::MinAboveMax { min, max });
        }
        Ok(Self { min, max })
    }

    /// The upper bound of the delay before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay for `attempt` given `unit` in `[0, 1]` (the random draw).
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The delay for `attempt` with a random jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }

    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_grow_and_cap() {
        let b = Backoff::try_new(ms(100), ms(1000)).unwrap();
        let table = [
            (0, 0.0, ms(50)),
            (0, 1.0, ms(100)),
            (1, 1.0, ms(200)),
            (3, 1.0, ms(800)),
            (4, 1.0, ms(1000)),
            (4, 0.0, ms(500)),
            (40, 0.5, ms(750)),
            (u32::MAX, 1.0, ms(1000)),
        ];
        for (attempt, unit, expected) in table {
            assert_eq!(b.delay_with(attempt, unit), expected, "attempt {attempt} unit {unit}");
        }
    }

    #[test]
    fn random_delay_stays_in_band() {
        let b = Backoff::try_new(ms(10), ms(80)).unwrap();
        for attempt in 0..10 {
            let d = b.delay(attempt);
            assert!(d >= b.ceiling(attempt) / 2 && d <= b.ceiling(attempt), "{d:?}");
        }
    }

    #[test]
    fn invalid_policies_cannot_be_built() {
        assert_eq!(Backoff::try_new(ms(0), ms(5)), Err(BackoffError::Zero));
        assert!(matches!(Backoff::try_new(ms(6), ms(5)), Err(BackoffError::MinAboveMax { .. })));
    }
}
