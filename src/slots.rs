//! Queue slots: how many commands are held (waiting or in flight), against
//! `queue.capacity`. A slot is a value, [`Slot`]: admission takes one and
//! it travels inside the command and then its report; dropping it — when
//! the outcome is final, or wherever a command ends early (a panic, a
//! shutdown, a coalesced duplicate) — gives it back. No one has to remember
//! to release it.
//!
//! A leaf: it knows no other module of the crate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug)]
pub struct Slots {
    held: AtomicUsize,
    capacity: usize,
    freed: Notify,
    /// Kept equal to the number held (`queue_depth`), when given.
    depth: Option<prometheus::IntGauge>,
}

/// One held slot; dropping it frees it.
#[derive(Debug)]
#[must_use = "a slot is freed as soon as it is dropped"]
pub struct Slot {
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let before = self.slots.held.fetch_sub(1, Ordering::AcqRel);
        self.slots.show(before.saturating_sub(1));
        self.slots.freed.notify_one();
    }
}

impl Slots {
    pub fn new(capacity: usize, depth: Option<prometheus::IntGauge>) -> Self {
        Self { held: AtomicUsize::new(0), capacity, freed: Notify::new(), depth }
    }

    fn show(&self, held: usize) {
        if let Some(gauge) = &self.depth {
            gauge.set(i64::try_from(held).unwrap_or(i64::MAX));
        }
    }

    /// Takes a slot if one is free.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let before = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| (h < self.capacity).then_some(h + 1))
            .ok()?;
        self.show(before + 1);
        Some(Slot { slots: Arc::clone(self) })
    }

    /// Takes a slot even beyond capacity (the further calls of a QoS 1
    /// message fanned out by routes).
    pub fn take(self: &Arc<Self>) -> Slot {
        let before = self.held.fetch_add(1, Ordering::AcqRel);
        self.show(before + 1);
        Slot { slots: Arc::clone(self) }
    }

    /// Resolves after some slot was released (or at once if one was since the last wait).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn is_full(&self) -> bool {
        self.held() >= self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_never_exceed_capacity_and_come_back_when_dropped() {
        let depth = prometheus::IntGauge::new("depth", "depth").unwrap();
        let s = Arc::new(Slots::new(2, Some(depth.clone())));
        let a = s.try_take().unwrap();
        let b = s.try_take().unwrap();
        assert!(s.try_take().is_none());
        assert!(s.is_full());
        assert_eq!(depth.get(), 2);
        drop(a);
        assert_eq!((s.held(), depth.get()), (1, 1));
        let c = s.take();
        let d = s.take();
        assert_eq!(s.held(), 3, "fan-out may go beyond capacity");
        drop((b, c, d));
        assert_eq!((s.held(), depth.get()), (0, 0));
    }

    #[test]
    fn a_panic_does_not_leak_a_slot() {
        let s = Arc::new(Slots::new(1, None));
        let slot = s.try_take().unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = slot;
            panic!("a stage dies holding a command");
        }));
        assert!(result.is_err());
        assert_eq!(s.held(), 0);
    }

    #[tokio::test]
    async fn a_release_wakes_a_waiter() {
        let s = Arc::new(Slots::new(1, None));
        let slot = s.try_take().unwrap();
        let waiter = {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.freed().await })
        };
        drop(slot);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}
