//! The status chart's data: outcomes per 10-second bucket over the last
//! hour, kept in a ring of at most [`BUCKETS`]. Pure: time is seconds since
//! the journal started, passed in, so the tests need no clock.

use std::collections::VecDeque;

use serde::Serialize;

/// Seconds per bucket.
pub const STEP: u64 = 10;
/// Buckets kept: one hour.
pub const BUCKETS: usize = 360;

/// One bucket's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Its first second (a multiple of [`STEP`]).
    pub start: u64,
    pub ok: u32,
    pub failed: u32,
    /// HTTP attempts beyond the first.
    pub retries: u32,
    pub dead_letters: u32,
}

/// The last hour, bucket by bucket (empty buckets are not stored).
#[derive(Debug, Default)]
pub struct Series {
    buckets: VecDeque<Bucket>,
}

/// What one outcome adds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub ok: bool,
    pub retries: u32,
    pub dead_letter: bool,
}

impl Series {
    /// Counts one outcome at second `now`.
    pub fn add(&mut self, now: u64, sample: Sample) {
        let start = now - now % STEP;
        if self.buckets.back().is_none_or(|b| b.start < start) {
            self.buckets.push_back(Bucket { start, ..Bucket::default() });
        }
        self.forget(now);
        // Times only grow: the newest bucket is this one.
        let b = self.buckets.back_mut().expect("pushed above if missing");
        if sample.ok {
            b.ok += 1;
        } else {
            b.failed += 1;
        }
        b.retries = b.retries.saturating_add(sample.retries);
        b.dead_letters += u32::from(sample.dead_letter);
    }

    /// Drops buckets older than an hour before `now`.
    fn forget(&mut self, now: u64) {
        let oldest = now.saturating_sub(STEP * BUCKETS as u64 - 1);
        while self.buckets.front().is_some_and(|b| b.start + STEP <= oldest) || self.buckets.len() > BUCKETS {
            self.buckets.pop_front();
        }
    }

    /// The buckets that end after `now - seconds`.
    fn within(&self, now: u64, seconds: u64) -> impl Iterator<Item = &Bucket> {
        let from = now.saturating_sub(seconds);
        self.buckets.iter().filter(move |b| b.start + STEP > from && b.start <= now)
    }

    /// Outcomes per second over the last minute.
    pub fn per_second(&self, now: u64) -> f64 {
        let n: u64 = self.within(now, 60).map(|b| u64::from(b.ok + b.failed)).sum();
        n as f64 / 60.0
    }

    /// Dead letters in the last hour.
    pub fn dead_letters_last_hour(&self, now: u64) -> u64 {
        self.within(now, 3600).map(|b| u64::from(b.dead_letters)).sum()
    }

    /// The last `count` buckets up to `now`, oldest first, empty ones
    /// filled in (also before the start), each with how long ago it began.
    pub fn chart(&self, now: u64, count: usize) -> Vec<(u64, Bucket)> {
        let last = now - now % STEP;
        (0..count as u64)
            .rev()
            .map(|back| {
                let ago = now - last + back * STEP;
                let bucket = last
                    .checked_sub(back * STEP)
                    .and_then(|start| self.buckets.iter().find(|b| b.start == start).copied())
                    .unwrap_or_default();
                (ago, bucket)
            })
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Sample = Sample { ok: true, retries: 0, dead_letter: false };
    const DEAD: Sample = Sample { ok: false, retries: 2, dead_letter: true };

    /// (adds as (second, sample), now, per second, dead letters in the hour).
    type Case = (&'static [(u64, Sample)], u64, f64, u64);

    #[test]
    fn rates_and_dead_letters_come_from_their_windows() {
        let table: &[Case] = &[
            (&[], 0, 0.0, 0),
            (&[(0, OK), (5, OK), (59, OK)], 59, 3.0 / 60.0, 0),
            (&[(0, OK), (65, OK)], 80, 1.0 / 60.0, 0),
            (&[(10, DEAD), (3000, OK)], 3000, 1.0 / 60.0, 1),
            (&[(10, DEAD), (3700, OK)], 3700, 1.0 / 60.0, 0),
        ];
        for (adds, now, rate, dead) in table {
            let mut s = Series::default();
            for (at, sample) in adds.iter() {
                s.add(*at, *sample);
            }
            assert_eq!((s.per_second(*now), s.dead_letters_last_hour(*now)), (*rate, *dead), "{adds:?} at {now}");
        }
    }

    #[test]
    fn the_chart_is_filled_and_bounded() {
        let mut s = Series::default();
        for t in [100, 101, 125] {
            s.add(t, OK);
        }
        s.add(126, DEAD);
        let chart = s.chart(131, 4);
        let counts: Vec<(u64, u32, u32, u32)> =
            chart.iter().map(|(ago, b)| (*ago, b.ok, b.failed, b.retries)).collect();
        assert_eq!(counts, vec![(31, 2, 0, 0), (21, 0, 0, 0), (11, 1, 1, 2), (1, 0, 0, 0)]);
        assert_eq!(s.chart(5, 3).len(), 3, "as many points before the start");
        // A day of traffic keeps one hour.
        for t in 0..86_400 {
            s.add(200 + t, OK);
        }
        assert!(s.len() <= BUCKETS, "{} buckets", s.len());
        assert_eq!(s.chart(86_599, 2).len(), 2);
    }
}
