//! Acknowledgements: QoS 1 commands are acked only once they reached a final
//! outcome, and always in the order they arrived (MQTT requires it).
//!
//! [`AckTracker`] is the pure bookkeeping; [`Acker`] is the task that sends
//! the PUBACKs through the MQTT client. Nothing else sends acks.
//!
//! Across a reconnect with a kept session the broker redelivers every unacked
//! command (same packet id, DUP set). Commands of the old connection become
//! *orphans* the moment the connection fails ([`AckTracker::disconnected`]):
//! nothing finishing while the link is down is acked, and when a redelivery
//! arrives it is bound to the original command instead of being executed
//! twice, and acked on the new connection when that one ends. An ack belongs
//! to the connection its message arrived on and never goes out on another:
//! the acker queues acks only under the tracker's lock, and ingress, under
//! the same lock, marks the tracker disconnected and empties rumqttc's
//! request channel of acks. Acks handed to the client shortly before a
//! failure may never have reached the broker; the last [`SENT_KEPT`] of them
//! are kept, so their redeliveries are acked again instead of run again.

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

/// Acks handed to the client that are remembered in case the connection
/// failed before they reached the broker (rumqttc's request channel holds
/// 1 024; the rest covers the socket's buffers).
pub const SENT_KEPT: usize = 4096;

/// Sequence numbers, ack order and orphans.
#[derive(Debug, Default)]
pub struct AckTracker {
    next_seq: u64,
    entries: HashMap<u64, Entry>,
    /// Sequence numbers of the current connection, in arrival order.
    order: VecDeque<u64>,
    orphans: HashMap<u16, u64>,
    /// Acks flushed on the current connection, newest last (packet id, fingerprint).
    sent: VecDeque<(u16, u64)>,
    /// Flushed acks the client's channel had no room for yet, in order.
    outbox: VecDeque<u16>,
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
                    if self.sent.len() == SENT_KEPT {
                        self.sent.pop_front();
                    }
                    self.sent.push_back((e.pkid, e.fingerprint));
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

    /// The connection failed. Everything it carried becomes an orphan now:
    /// commands finishing before the next CONNACK are not acked (an ack
    /// queued now would go out on the next connection), and the recently
    /// sent acks, which may not have reached the broker, are kept as
    /// finished orphans so that a redelivery is acked, not run again.
    /// Unsent acks are dropped: the broker redelivers their commands.
    pub fn disconnected(&mut self) {
        self.outbox.clear();
        for (pkid, fingerprint) in std::mem::take(&mut self.sent) {
            let seq = self.next_unacked();
            self.entries.insert(seq, Entry { parts: 0, pkid, fingerprint, done: true, orphan: true });
            self.adopt(pkid, seq);
        }
        for seq in std::mem::take(&mut self.order) {
            if let Some(entry) = self.entries.get_mut(&seq) {
                entry.orphan = true;
                let pkid = entry.pkid;
                self.adopt(pkid, seq);
            }
        }
    }

    /// `seq` awaits its redelivery under `pkid`; a newer use of the packet
    /// id replaces an older one (the broker reuses an id only once acked).
    fn adopt(&mut self, pkid: u16, seq: u64) {
        if let Some(older) = self.orphans.insert(pkid, seq) {
            if older != seq {
                self.entries.remove(&older);
            }
        }
    }

    /// A new connection is up. With a kept session, the orphans await their
    /// redelivery (until the first SUBACK, [`Self::redeliveries_over`]);
    /// without one, the broker forgot them and they will never be acked
    /// (they still run to completion).
    pub fn reconnected(&mut self, session_present: bool) {
        // Normally done when the old connection failed; harmless twice.
        self.disconnected();
        if !session_present {
            for (_, seq) in self.orphans.drain() {
                self.entries.remove(&seq);
            }
        }
    }

    /// Acks the client could not take yet (its channel was full): they go
    /// first next time, unless the connection fails before.
    pub fn defer(&mut self, pkids: impl IntoIterator<Item = u16>) {
        self.outbox.extend(pkids);
    }

    /// The deferred acks, to be queued before any new one.
    pub fn take_deferred(&mut self) -> VecDeque<u16> {
        std::mem::take(&mut self.outbox)
    }

    /// Whether acks wait for room in the client's channel.
    pub fn has_deferred(&self) -> bool {
        !self.outbox.is_empty()
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

/// How soon acks the client had no room for are tried again.
const DEFERRED_RETRY: std::time::Duration = std::time::Duration::from_millis(2);

impl Acker {
    /// Runs until every sender of `rx` is gone.
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<AckMsg>) {
        let mut reconnect: Option<u64> = None;
        loop {
            let deferred = self.lock().has_deferred();
            let msg = if deferred {
                match tokio::time::timeout(DEFERRED_RETRY, rx.recv()).await {
                    Ok(None) => break,
                    Ok(Some(msg)) => msg,
                    Err(_) => AckMsg::Flush,
                }
            } else {
                match rx.recv().await {
                    Some(msg) => msg,
                    None => break,
                }
            };
            if let AckMsg::Reconnect(connection) = msg {
                reconnect = Some(connection);
            }
            let all_acked = self.step(msg);
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

    fn lock(&self) -> std::sync::MutexGuard<'_, AckTracker> {
        self.tracker.lock().expect("ack tracker lock is never poisoned: no panics under it")
    }

    /// One message: the acks it makes ready are queued with the client
    /// under the tracker's lock, so none is queued after ingress marked the
    /// connection failed. Returns whether nothing is left to ack.
    fn step(&self, msg: AckMsg) -> bool {
        let mut tracker = self.lock();
        let ready = match msg {
            AckMsg::Complete(seq) => tracker.complete(seq),
            AckMsg::Flush | AckMsg::Reconnect(_) => tracker.flush(),
        };
        let mut queue = tracker.take_deferred();
        queue.extend(ready);
        while let Some(pkid) = queue.pop_front() {
            let mut ack = Publish::new("", QoS::AtLeastOnce, Bytes::new(), None);
            ack.pkid = pkid;
            match self.client.try_ack(&ack) {
                Ok(()) => {}
                Err(rumqttc::v5::ClientError::TryRequest(_)) => {
                    // The channel is full: keep the rest, in order.
                    queue.push_front(pkid);
                    tracker.defer(queue);
                    break;
                }
                Err(e) => tracing::warn!(pkid, error = %e, "could not queue ack; the broker will redeliver"),
            }
        }
        self.pending.set(tracker.pending() as i64);
        tracker.pending() == 0
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
    fn orphans_wait_across_connections_until_the_first_suback() {
        let mut t = AckTracker::default();
        t.register(1, 1, false);
        t.disconnected();
        t.reconnected(true);
        // This connection failed before the broker redelivered anything.
        t.disconnected();
        t.reconnected(true);
        assert_eq!(t.pending(), 1, "the broker still holds it");
        assert_eq!(t.redeliveries_over(), 1);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn nothing_finishing_while_disconnected_is_acked_until_redelivered() {
        let mut t = AckTracker::default();
        let Registration::New(a) = t.register(7, 70, false) else { panic!() };
        let Registration::New(b) = t.register(8, 80, false) else { panic!() };
        t.disconnected();
        assert!(t.complete(a).is_empty(), "no ack while the link is down");
        assert!(t.complete(b).is_empty());
        assert!(t.flush().is_empty());
        t.reconnected(true);
        assert!(t.flush().is_empty(), "nothing acked on the new connection before its redelivery");
        assert_eq!(t.register(7, 70, true), Registration::Redelivered { seq: a, done: true });
        assert_eq!(t.flush(), vec![7]);
        assert_eq!(t.register(8, 80, true), Registration::Redelivered { seq: b, done: true });
        assert_eq!(t.flush(), vec![8]);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn an_ack_lost_with_the_connection_is_sent_again_not_rerun() {
        let mut t = AckTracker::default();
        let Registration::New(a) = t.register(3, 30, false) else { panic!() };
        assert_eq!(t.complete(a), vec![3], "handed to the client, never written");
        t.disconnected();
        t.reconnected(true);
        let Registration::Redelivered { done: true, .. } = t.register(3, 30, true) else {
            panic!("the redelivery of a finished command must not run again")
        };
        assert_eq!(t.flush(), vec![3]);
        // Acks that did arrive (3 again, and 4): no redelivery, both
        // forgotten at the first SUBACK.
        let Registration::New(b) = t.register(4, 40, false) else { panic!() };
        assert_eq!(t.complete(b), vec![4]);
        t.disconnected();
        t.reconnected(true);
        assert_eq!(t.redeliveries_over(), 2);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn deferred_acks_are_dropped_when_the_connection_fails() {
        let mut t = AckTracker::default();
        let Registration::New(a) = t.register(9, 90, false) else { panic!() };
        let ready = t.complete(a);
        t.defer(ready);
        assert!(t.has_deferred());
        t.disconnected();
        assert!(!t.has_deferred(), "an unsent ack never goes out on the next connection");
        t.reconnected(true);
        assert!(matches!(t.register(9, 90, true), Registration::Redelivered { done: true, .. }));
        assert_eq!(t.flush(), vec![9], "acked once, on the connection of the redelivery");
    }
}
