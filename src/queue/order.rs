//! Per-entity ordering: a command may start only when every earlier command
//! that shares one of its order keys (entity ids) has finished.
//!
//! Pure bookkeeping over sequence numbers; the dispatcher owns the commands.

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Default)]
pub struct OrderBook {
    /// Per key, the commands holding it, oldest first; the head may run.
    queues: HashMap<String, VecDeque<u64>>,
    /// Per waiting command: its keys and how many of them it does not head yet.
    blocked: HashMap<u64, (Vec<String>, usize)>,
    /// Commands free to start, in the order they became free.
    ready: VecDeque<u64>,
}

impl OrderBook {
    pub fn insert(&mut self, seq: u64, mut keys: Vec<String>) {
        keys.sort();
        keys.dedup();
        let mut waits = 0;
        for key in &keys {
            let q = self.queues.entry(key.clone()).or_default();
            if !q.is_empty() {
                waits += 1;
            }
            q.push_back(seq);
        }
        if waits == 0 {
            self.ready.push_back(seq);
        }
        self.blocked.insert(seq, (keys, waits));
    }

    /// The next command free to start.
    pub fn pop_ready(&mut self) -> Option<u64> {
        self.ready.pop_front()
    }

    /// `seq` has finished: the commands behind it on each key move up.
    pub fn finish(&mut self, seq: u64) {
        let Some((keys, _)) = self.blocked.remove(&seq) else {
            return;
        };
        for key in keys {
            let Some(q) = self.queues.get_mut(&key) else {
                continue;
            };
            debug_assert_eq!(q.front(), Some(&seq), "only a key's head can finish");
            q.pop_front();
            match q.front() {
                None => {
                    self.queues.remove(&key);
                }
                Some(&next) => {
                    let entry = self.blocked.get_mut(&next).expect("queued commands are tracked");
                    entry.1 -= 1;
                    if entry.1 == 0 {
                        self.ready.push_back(next);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    fn drain(b: &mut OrderBook) -> Vec<u64> {
        std::iter::from_fn(|| b.pop_ready()).collect()
    }

    #[test]
    fn same_entity_runs_in_order_others_in_parallel() {
        let mut b = OrderBook::default();
        b.insert(1, keys(&["light.a"]));
        b.insert(2, keys(&["light.a"]));
        b.insert(3, keys(&["light.b"]));
        assert_eq!(drain(&mut b), vec![1, 3]);
        b.finish(3);
        assert_eq!(drain(&mut b), Vec::<u64>::new());
        b.finish(1);
        assert_eq!(drain(&mut b), vec![2]);
        b.finish(2);
        assert!(b.blocked.is_empty());
    }

    #[test]
    fn a_multi_entity_command_waits_for_all_its_entities() {
        let mut b = OrderBook::default();
        b.insert(1, keys(&["a"]));
        b.insert(2, keys(&["b"]));
        b.insert(3, keys(&["a", "b", "a"]));
        b.insert(4, keys(&["b"]));
        assert_eq!(drain(&mut b), vec![1, 2]);
        b.finish(1);
        assert_eq!(drain(&mut b), Vec::<u64>::new());
        b.finish(2);
        assert_eq!(drain(&mut b), vec![3]);
        b.finish(3);
        assert_eq!(drain(&mut b), vec![4]);
        b.finish(4);
        assert_eq!(b.blocked.len(), 0);
    }
}
