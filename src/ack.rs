//! Acknowledgements: QoS 1 commands are acked only once they reached a final
//! outcome, and always in the order they arrived (MQTT requires it).
//!
//! [`AckTracker`] is the pure bookkeeping; [`Acker`] is the task that sends
//! the PUBACKs through the MQTT client. Nothing else sends acks.
//!
//! Across a reconnect with a kept session the broker redelivers every unacked
//! command (same packet id, DUP set). Commands of the old connection become
//! *orphans*: when their redelivery arrives it is bound to the original
//! command instead of being executed twice, and acked when that one ends.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::mpsc;

/// What registering an incoming QoS 1 message means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// A new command: process it under this sequence number.
    New(u64),
    /// The broker redelivered a command we still hold (or just finished):
    /// do not run it again. If `done`, acks may be ready to flush.
    Redelivered { seq: u64, done: bool },
}

#[derive(Debug)]
struct Entry {
    /// Final outcomes still to come (routes can make several commands of one message).
    parts: usize,
    pkid: u16,
    fingerprint: u64,
    done: bool,
    /// Belongs to a connection that has gone; acked only if redelivered.
    orphan: bool,
}

/// Sequence numbers, ack order and orphans.
#[derive(Debug, Default)]
pub struct AckTracker {
    next_seq: u64,
    entries: HashMap<u64, Entry>,
    /// Sequence numbers of the current connection, in arrival order.
    order: VecDeque<u64>,
    orphans: HashMap<u16, u64>,
}

impl AckTracker {
    /// A sequence number for a message that needs no ack (QoS 0).
    pub fn next_unacked(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Records an incoming QoS 1 message. `fingerprint` identifies its topic
    /// and payload, so a reused packet id is not mistaken for a redelivery.
    pub fn register(&mut self, pkid: u16, fingerprint: u64, dup: bool) -> Registration {
        if dup {
            if let Some(&seq) = self.orphans.get(&pkid) {
                let entry = self.entries.get_mut(&seq).expect("every orphan has an entry");
                if entry.fingerprint == fingerprint {
                    self.orphans.remove(&pkid);
                    entry.orphan = false;
                    self.order.push_back(seq);
                    return Registration::Redelivered { seq, done: entry.done };
                }
            }
        }
        let seq = self.next_unacked();
        self.entries.insert(seq, Entry { parts: 1, pkid, fingerprint, done: false, orphan: false });
        self.order.push_back(seq);
        Registration::New(seq)
    }

    /// Drops `seq` (the message just registered) without ever acking it:
    /// the broker keeps it and redelivers it after the next connection,
    /// where it is a new command again.
    pub fn forget(&mut self, seq: u64) {
        self.entries.remove(&seq);
        if self.order.back() == Some(&seq) {
            self.order.pop_back();
        }
    }

    /// The message `seq` ends only after `parts` final outcomes (at least 1).
    pub fn set_parts(&mut self, seq: u64, parts: usize) {
        if let Some(entry) = self.entries.get_mut(&seq) {
            entry.parts = parts.max(1);
        }
    }

    /// One final outcome for `seq`; returns the packet ids that may be acked now, in order.
    pub fn complete(&mut self, seq: u64) -> Vec<u16> {
        if let Some(entry) = self.entries.get_mut(&seq) {
            entry.parts = entry.parts.saturating_sub(1);
            if entry.parts > 0 {
                return Vec::new();
            }
            entry.done = true;
            if entry.orphan {
                // Waits for its redelivery; nothing to send on this connection.
                return Vec::new();
            }
        }
        self.flush()
    }

    /// Packet ids at the head of the order whose commands are done.
    pub fn flush(&mut self) -> Vec<u16> {
        let mut ready = Vec::new();
        while let Some(seq) = self.order.front() {
            match self.entries.get(seq) {
                Some(e) if e.done => {
                    ready.push(e.pkid);
                    self.entries.remove(seq);
                    self.order.pop_front();
                }
                Some(_) => break,
                None => {
                    self.order.pop_front();
                }
            }
        }
        ready
    }

    /// A new connection is up. With a kept session, what we held becomes
    /// orphans awaiting redelivery; without one, the broker forgot them and
    /// they will never be acked (they still run to completion).
    pub fn reconnected(&mut self, session_present: bool) {
        // Orphans of an older connection were redelivered by now or never will be.
        for (_, seq) in self.orphans.drain() {
            self.entries.remove(&seq);
        }
        for seq in self.order.drain(..) {
            let Some(entry) = self.entries.get_mut(&seq) else {
                continue;
            };
            if session_present {
                entry.orphan = true;
                self.orphans.insert(entry.pkid, seq);
            } else {
                self.entries.remove(&seq);
            }
        }
    }

    /// The broker has sent every redelivery it will send: on a resumed
    /// session it resends unacked messages right after CONNACK, before it
    /// answers our SUBSCRIBE, so the first SUBACK marks the end. Orphans not
    /// redelivered by then were forgotten by the broker (a restore from an
    /// older save, an expired session); they ran or still run, but there is
    /// nothing left to ack. Returns how many were dropped.
    pub fn redeliveries_over(&mut self) -> usize {
        let forgotten = self.orphans.len();
        for (_, seq) in self.orphans.drain() {
            self.entries.remove(&seq);
        }
        forgotten
    }

    /// QoS 1 messages received and not yet acked.
    pub fn pending(&self) -> usize {
        self.entries.len()
    }
}

/// A hash of topic and payload for matching redeliveries.
pub fn fingerprint(topic: &[u8], payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

/// A message for the [`Acker`].
#[derive(Debug, Clone, Copy)]
pub enum AckMsg {
    /// The command with this sequence number reached its final outcome.
    Complete(u64),
    /// Acks may have become ready without a completion (a redelivery of a
    /// finished command).
    Flush,
    /// Once every command of connection number `n` is acked, disconnect
    /// (queued behind those acks, so none is lost) to have the broker
    /// redeliver the commands left to it; see `ingress::Overflow`. Moot if
    /// that connection has ended anyway.
    Reconnect(u64),
}

/// The task that turns completions into PUBACKs, in order.
pub struct Acker {
    pub tracker: Arc<Mutex<AckTracker>>,
    pub client: AsyncClient,
    /// Keeps `acks_pending` current.
    pub pending: prometheus::IntGauge,
    /// Counts broker connections (for `AckMsg::Reconnect`).
    pub connections: tokio::sync::watch::Receiver<u64>,
}

impl Acker {
    /// Runs until every sender of `rx` is gone.
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<AckMsg>) {
        let mut reconnect: Option<u64> = None;
        while let Some(msg) = rx.recv().await {
            let (ready, all_acked) = {
                let mut tracker = self.tracker.lock().expect("ack tracker lock is never poisoned: no panics under it");
                let ready = match msg {
                    AckMsg::Complete(seq) => tracker.complete(seq),
                    AckMsg::Flush => tracker.flush(),
                    AckMsg::Reconnect(connection) => {
                        reconnect = Some(connection);
                        tracker.flush()
                    }
                };
                self.pending.set(tracker.pending() as i64);
                (ready, tracker.pending() == 0)
            };
            for pkid in ready {
                let mut ack = Publish::new("", QoS::AtLeastOnce, Bytes::new(), None);
                ack.pkid = pkid;
                if let Err(e) = self.client.ack(&ack).await {
                    tracing::warn!(pkid, error = %e, "could not queue ack; the broker will redeliver");
                }
            }
            if let Some(connection) = reconnect {
                if *self.connections.borrow() != connection {
                    reconnect = None;
                } else if all_acked {
                    reconnect = None;
                    if let Err(e) = self.client.disconnect().await {
                        tracing::warn!(error = %e, "could not queue the disconnect");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_leave_in_arrival_order() {
        let mut t = AckTracker::default();
        let a = t.register(10, 1, false);
        let b = t.register(11, 2, false);
        let c = t.register(12, 3, false);
        let seq = |r| match r {
            Registration::New(s) => s,
            other => panic!("{other:?}"),
        };
        let (a, b, c) = (seq(a), seq(b), seq(c));
        assert_eq!(t.complete(c), Vec::<u16>::new());
        assert_eq!(t.complete(b), Vec::<u16>::new());
        assert_eq!(t.complete(a), vec![10, 11, 12]);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_message_with_several_parts_is_acked_after_the_last() {
        let mut t = AckTracker::default();
        let Registration::New(a) = t.register(1, 1, false) else { panic!() };
        t.set_parts(a, 3);
        assert!(t.complete(a).is_empty());
        assert!(t.complete(a).is_empty());
        assert_eq!(t.complete(a), vec![1]);
    }

    #[test]
    fn redelivery_after_reconnect_is_bound_not_rerun() {
        let mut t = AckTracker::default();
        let Registration::New(a) = t.register(5, 42, false) else { panic!() };
        let Registration::New(b) = t.register(6, 43, false) else { panic!() };
        assert!(t.complete(b).is_empty(), "b waits for a");
        t.reconnected(true);
        // a finishes while the connection is being re-established: no ack yet.
        assert!(t.complete(a).is_empty());
        // The broker redelivers both; neither is executed again.
        assert_eq!(t.register(5, 42, true), Registration::Redelivered { seq: a, done: true });
        assert_eq!(t.register(6, 43, true), Registration::Redelivered { seq: b, done: true });
        assert_eq!(t.flush(), vec![5, 6]);
    }

    #[test]
    fn a_reused_packet_id_with_other_content_is_a_new_command() {
        let mut t = AckTracker::default();
        t.register(5, 42, false);
        t.reconnected(true);
        assert!(matches!(t.register(5, 99, true), Registration::New(_)));
        assert!(matches!(t.register(5, 42, false), Registration::New(_)), "no DUP flag: new");
    }

    #[test]
    fn without_a_session_old_commands_are_never_acked() {
        let mut t = AckTracker::default();
        let Registration::New(a) = t.register(1, 1, false) else { panic!() };
        t.reconnected(false);
        assert!(t.complete(a).is_empty());
        let Registration::New(b) = t.register(1, 2, false) else { panic!() };
        assert_eq!(t.complete(b), vec![1]);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn orphans_not_redelivered_before_the_suback_are_forgotten() {
        let mut t = AckTracker::default();
        let Registration::New(a) = t.register(1, 1, false) else { panic!() };
        let Registration::New(b) = t.register(2, 2, false) else { panic!() };
        t.reconnected(true);
        assert_eq!(t.register(1, 1, true), Registration::Redelivered { seq: a, done: false });
        assert_eq!(t.redeliveries_over(), 1, "b was not redelivered");
        assert_eq!(t.pending(), 1, "a still waits for its outcome");
        assert!(t.complete(b).is_empty(), "b finishing has nothing to ack");
        assert_eq!(t.complete(a), vec![1]);
        assert_eq!(t.pending(), 0);
        assert!(matches!(t.register(2, 2, true), Registration::New(_)), "a late redelivery runs again: at least once");
    }

    #[test]
    fn orphans_not_redelivered_are_forgotten_at_the_next_reconnect() {
        let mut t = AckTracker::default();
        t.register(1, 1, false);
        t.reconnected(true);
        assert_eq!(t.pending(), 1);
        t.reconnected(true);
        assert_eq!(t.pending(), 0);
    }
}
