//! Queue slots: how many commands are held (waiting or in flight), against
//! `queue.capacity`. Admission takes a slot, the publisher releases it when
//! the command's outcome is final.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Debug)]
pub struct Slots {
    held: AtomicUsize,
    capacity: usize,
    freed: Notify,
}

impl Slots {
    pub fn new(capacity: usize) -> Self {
        Self { held: AtomicUsize::new(0), capacity, freed: Notify::new() }
    }

    /// Takes a slot if one is free; returns the number held after.
    pub fn try_take(&self) -> Option<usize> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| (h < self.capacity).then_some(h + 1))
            .ok()
            .map(|h| h + 1)
    }

    /// Takes a slot even beyond capacity (the further calls of a QoS 1
    /// message fanned out by routes); returns the number held after.
    pub fn take(&self) -> usize {
        self.held.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Releases a slot; returns the number held after.
    pub fn release(&self) -> usize {
        let before = self.held.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
        before.saturating_sub(1)
    }

    /// Resolves after some slot was released (or at once if one was since the last wait).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_full(&self) -> bool {
        self.held() >= self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_never_exceed_capacity() {
        let s = Slots::new(2);
        assert_eq!(s.try_take(), Some(1));
        assert_eq!(s.try_take(), Some(2));
        assert_eq!(s.try_take(), None);
        assert!(s.is_full());
        assert_eq!(s.release(), 1);
        assert_eq!(s.try_take(), Some(2));
    }

    #[tokio::test]
    async fn a_release_wakes_a_waiter() {
        let s = std::sync::Arc::new(Slots::new(1));
        s.try_take();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.freed().await })
        };
        s.release();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}
