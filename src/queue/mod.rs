//! The queue: per-entity ordering, bounded concurrency, the rate limit,
//! expiry and retries between admission and Home Assistant.
//!
//! [`Dispatcher::run`] is only the loop: it starts commands as the
//! [`OrderBook`] frees them and reports each final outcome. The single step,
//! one command from deadline check to final outcome, is
//! [`Executor::execute`]. This module never talks to MQTT.

mod order;
mod rate;
mod slots;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use order::OrderBook;
pub use rate::{RateLimiter, TokenBucket};
pub use slots::Slots;

use crate::backoff::Backoff;
use crate::command::{Action, Command, ErrorCode, Outcome};
use crate::ha::{HaClient, HaError, HaErrorKind, Retry};
use crate::metrics::{self, Health, Metrics};
use crate::publisher::Report;

/// A command that reached its final outcome.
#[derive(Debug)]
pub struct Finished {
    pub command: Command,
    pub outcome: Outcome,
}

/// Runs one command against HA, retrying what can be retried.
pub struct Executor {
    pub ha: HaClient,
    pub limiter: RateLimiter,
    pub max_attempts: NonZeroU32,
    pub retry: Backoff,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    /// Cancelled at shutdown: no new attempt starts, waits end.
    pub shutdown: CancellationToken,
}

enum Wait {
    Done,
    Deadline,
    Shutdown,
}

impl Executor {
    /// Sleeps until `until`, unless the deadline or shutdown comes first.
    async fn wait(&self, until: Instant, deadline: Instant) -> Wait {
        if until > deadline {
            tokio::select! {
                _ = self.shutdown.cancelled() => Wait::Shutdown,
                _ = tokio::time::sleep_until(deadline) => Wait::Deadline,
            }
        } else {
            tokio::select! {
                _ = self.shutdown.cancelled() => Wait::Shutdown,
                _ = tokio::time::sleep_until(until) => Wait::Done,
            }
        }
    }

    /// From "may it still run?" to a final outcome.
    pub async fn execute(&self, cmd: &Command) -> Outcome {
        let idempotent = cmd.action.is_idempotent();
        let mut attempt = 0u32;
        let mut last: Option<HaError> = None;
        loop {
            if Instant::now() >= cmd.deadline {
                return expired(last);
            }
            let gate = tokio::select! {
                r = self.ha.gate.wait_open(cmd.deadline) => r,
                _ = self.shutdown.cancelled() => return shutting_down(),
            };
            if gate.is_err() {
                return Outcome::failed(
                    ErrorCode::HaUnauthorized,
                    Some(401),
                    "token refused until the command expired".to_owned(),
                );
            }
            let slot = self.limiter.reserve();
            if !slot.is_zero() {
                self.metrics.rate_limited.inc();
                self.metrics.rate_limit_wait.inc_by(slot.as_secs_f64());
            }
            match self.wait(Instant::now() + slot, cmd.deadline).await {
                Wait::Done => {}
                Wait::Deadline => return expired(last),
                Wait::Shutdown => return shutting_down(),
            }
            let started = Instant::now();
            let result = self.ha.execute(&cmd.action).await;
            self.metrics.ha_latency.observe(started.elapsed().as_secs_f64());
            self.metrics
                .ha_calls
                .with_label_values(&[metrics::status_class(result.as_ref().map(|r| r.status).map_err(|e| e.kind))])
                .inc();
            self.health.observe(&self.metrics, result.as_ref().map(|_| ()).map_err(|e| e.kind));
            let error = match result {
                Ok(response) => return Outcome::done(response.status, response.changed),
                Err(e) => e,
            };
            let backoff_from = match error.retry(idempotent) {
                Retry::No => return final_failure(error),
                Retry::AfterAuth => {
                    last = Some(error);
                    continue;
                }
                Retry::Backoff => {
                    attempt += 1;
                    if attempt >= self.max_attempts.get() {
                        return final_failure(error);
                    }
                    self.retry.delay(attempt - 1).max(error.retry_after.unwrap_or_default())
                }
            };
            tracing::debug!(action = %cmd.action.name(), attempt, error = %error, "retrying");
            self.metrics.retries.inc();
            last = Some(error);
            match self.wait(Instant::now() + backoff_from, cmd.deadline).await {
                Wait::Done => {}
                Wait::Deadline => return expired(last),
                Wait::Shutdown => return shutting_down(),
            }
        }
    }
}

fn expired(last: Option<HaError>) -> Outcome {
    Outcome::failed(ErrorCode::Expired, last.as_ref().and_then(|e| e.status), last.map(|e| e.message))
}

fn shutting_down() -> Outcome {
    Outcome::failed(ErrorCode::ShuttingDown, None, None)
}

fn final_failure(e: HaError) -> Outcome {
    let code = match e.kind {
        HaErrorKind::Rejected | HaErrorKind::InvalidResponse => ErrorCode::HaError,
        HaErrorKind::Unauthorized => ErrorCode::HaUnauthorized,
        HaErrorKind::Timeout | HaErrorKind::Transport => ErrorCode::HaTimeout,
        HaErrorKind::RateLimited | HaErrorKind::Server | HaErrorKind::Connect => ErrorCode::HaUnavailable,
    };
    Outcome::failed(code, e.status, e.message)
}

/// The loop around [`Executor::execute`].
pub struct Dispatcher {
    pub executor: Arc<Executor>,
    pub concurrency: NonZeroU32,
}

impl Dispatcher {
    /// Runs until `input` closes (shutdown) and the calls in flight finish.
    /// Commands still waiting then are dropped unacknowledged: the broker
    /// redelivers them to the next session.
    pub async fn run(self, mut input: mpsc::UnboundedReceiver<Command>, output: mpsc::UnboundedSender<Report>) {
        let mut book = OrderBook::default();
        let mut waiting: HashMap<u64, Command> = HashMap::new();
        let mut running: JoinSet<Finished> = JoinSet::new();
        let mut open = true;
        loop {
            while open && running.len() < self.concurrency.get() as usize {
                let Some(seq) = book.pop_ready() else { break };
                let command = waiting.remove(&seq).expect("every ready sequence number has a waiting command");
                let executor = Arc::clone(&self.executor);
                running.spawn(async move {
                    let outcome = executor.execute(&command).await;
                    Finished { command, outcome }
                });
            }
            tokio::select! {
                cmd = input.recv(), if open => match cmd {
                    Some(cmd) => {
                        book.insert(cmd.seq, cmd.action.order_keys());
                        waiting.insert(cmd.seq, cmd);
                    }
                    None => open = false,
                },
                Some(joined) = running.join_next() => {
                    let Finished { command, outcome } = joined.expect("execute never panics");
                    book.finish(command.seq);
                    let report = Report {
                        seq: command.seq,
                        service: Some(command.action.result_service()),
                        get: matches!(command.action, Action::Get(_)),
                        topic: None,
                        reply: command.reply,
                        outcome,
                        received_at: command.received_at,
                        held: true,
                    };
                    if output.send(report).is_err() {
                        tracing::error!("publisher is gone; outcome lost (the broker redelivers the command)");
                    }
                }
                else => break,
            }
            if !open && running.is_empty() {
                if !waiting.is_empty() {
                    tracing::info!(count = waiting.len(), "left unstarted at shutdown; the broker redelivers them");
                }
                break;
            }
        }
    }
}
