//! The queue: per-entity ordering, bounded concurrency, the rate limit,
//! expiry and retries between admission and Home Assistant.
//!
//! [`Dispatcher::run`] is only the loop: it starts commands as the
//! [`OrderBook`] frees them and reports each final outcome. The single step,
//! one command from deadline check to final outcome, is
//! [`Executor::execute`]. This module never talks to MQTT.

mod order;
mod rate;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::slots::Slots;
pub use order::OrderBook;
pub use rate::RateLimiter;

use crate::backoff::Backoff;
use crate::command::Report;
use crate::command::{Action, Command, ErrorCode, Outcome};
use crate::ha::{Ask, CallResponse, HaClient, HaError, HaErrorKind, Refusal, Retry};
use crate::metrics::{self, Health, Metrics};

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
    /// `run --dry-run`: service calls are not sent, only reported.
    pub dry_run: bool,
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
        let tries = std::sync::atomic::AtomicU32::new(0);
        let mut outcome = self.attempt_all(cmd, &tries).await;
        outcome.attempts = tries.into_inner();
        outcome
    }

    async fn attempt_all(&self, cmd: &Command, tries: &std::sync::atomic::AtomicU32) -> Outcome {
        if self.dry_run && matches!(cmd.action, Action::Call(_)) {
            return Outcome {
                status: None,
                changed: Vec::new(),
                error: None,
                detail: Some("dry run: not sent".into()),
                attempts: 0,
                response: None,
            };
        }
        let idempotent = cmd.action.is_idempotent();
        let mut spent = Spent::default();
        let mut last: Option<HaError> = None;
        loop {
            // Decided again before every attempt: HA may have restarted as another version.
            let return_response = match self.ask(&cmd.action) {
                Ask::Send { return_response } => return_response,
                Ask::Refuse(why) => {
                    return Outcome::failed(ErrorCode::ResponseUnsupported, None, why.detail(&cmd.action.name()))
                }
            };
            // Held until HA answered: a probe that gives up on the way
            // (deadline, shutdown) hands its role back when this drops.
            let _pass = match self.may_send(cmd).await {
                Ok(pass) => pass,
                Err(Stop::Expired) => return expired(last),
                Err(Stop::Shutdown) => return shutting_down(),
                Err(Stop::Refused) => {
                    let detail = "token refused until the command expired".to_owned();
                    return Outcome::failed(ErrorCode::HaUnauthorized, Some(401), detail);
                }
            };
            tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let error = match self.attempt(&cmd.action, return_response).await {
                Ok(response) => return answered(response, return_response, &cmd.action),
                Err(e) => e,
            };
            let delay = match next_after(&error, idempotent, &mut spent, self.max_attempts) {
                Next::GiveUp => return final_failure(error),
                Next::AwaitAuth => {
                    last = Some(error);
                    continue;
                }
                Next::AwaitHa { step } => self.retry.delay(step),
                Next::Retry { step, at_least, pause_all } => self.retry_delay(step, at_least, pause_all),
            };
            tracing::debug!(action = %cmd.action.name(), attempt = spent.attempts, error = %error, "retrying");
            self.metrics.retries.inc();
            let connect_error = error.kind == HaErrorKind::Connect;
            last = Some(error);
            match self.wait_to_retry(connect_error, delay, cmd.deadline).await {
                Wait::Done => {}
                Wait::Deadline => return expired(last),
                Wait::Shutdown => return shutting_down(),
            }
        }
    }

    /// Whether to ask HA for the service response, or to refuse the call.
    fn ask(&self, action: &Action) -> Ask {
        match action {
            Action::Call(call) => {
                self.ha.known.decide(call.domain.as_str(), call.service.as_str(), call.return_response)
            }
            Action::Get(_) => Ask::Send { return_response: false },
        }
    }

    /// Until the command may be sent: before its deadline, through the auth
    /// gate and the rate limit.
    async fn may_send(&self, cmd: &Command) -> Result<crate::ha::Pass, Stop> {
        if Instant::now() >= cmd.deadline {
            return Err(Stop::Expired);
        }
        let pass = tokio::select! {
            r = self.ha.gate.wait_open(cmd.deadline) => r.map_err(|_| Stop::Refused)?,
            _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
        };
        let slot = self.limiter.reserve();
        // No timer for a zero wait: tokio's timer ticks in milliseconds,
        // and a sleep of nothing would cost one.
        if !slot.is_zero() {
            self.metrics.rate_limited.inc();
            self.metrics.rate_limit_wait.inc_by(slot.as_secs_f64());
            let stop = match self.wait(Instant::now() + slot, cmd.deadline).await {
                Wait::Done => return Ok(pass),
                Wait::Deadline => Stop::Expired,
                Wait::Shutdown => Stop::Shutdown,
            };
            // The token goes unused: the next command may have its slot.
            self.limiter.release();
            return Err(stop);
        }
        Ok(pass)
    }

    /// One HTTP attempt, measured and counted, its answer told to `Health`.
    async fn attempt(&self, action: &Action, return_response: bool) -> Result<crate::ha::CallResponse, HaError> {
        let started = Instant::now();
        let result = self.ha.execute(action, return_response).await;
        self.metrics.ha_latency.observe(started.elapsed().as_secs_f64());
        let class = metrics::status_class(result.as_ref().map(|r| r.status).map_err(|e| e.kind));
        self.metrics.ha_calls.with_label_values(&[class]).inc();
        self.health.observe(&self.metrics, result.as_ref().map(|_| ()).map_err(|e| e.kind));
        result
    }

    /// The backoff of step `step`, at least `at_least`; a 429 holds every call.
    fn retry_delay(&self, step: u32, at_least: Duration, pause_all: bool) -> Duration {
        let delay = self.retry.delay(step).max(at_least);
        if pause_all {
            // "Too many requests" is about all calls: hold them all.
            tracing::info!(pause_ms = delay.as_millis() as u64, "home assistant asked to slow down");
            self.limiter.pause(delay);
        }
        delay
    }

    /// Waits `delay` before a retry; after a connection error, ends early
    /// as soon as HA answers again (`Health::ha_back`).
    async fn wait_to_retry(&self, connect_error: bool, delay: Duration, deadline: Instant) -> Wait {
        // Registered before the check: a recovery in between still wakes us.
        let back = self.health.ha_back.notified();
        let wait = self.wait(Instant::now() + delay, deadline);
        if !connect_error {
            wait.await
        } else if Health::get(&self.health.ha_reachable) {
            // Another call got through since ours failed.
            Wait::Done
        } else {
            tokio::select! {
                w = wait => w,
                () = back => Wait::Done,
            }
        }
    }
}

/// Why a command stops before its next attempt.
enum Stop {
    Expired,
    Shutdown,
    /// The auth gate stayed closed until the deadline.
    Refused,
}

/// What a command has spent on failures so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Spent {
    /// Failed attempts that count against `max_attempts`.
    attempts: u32,
    /// Attempts that never reached HA (connection refused); they count for
    /// the backoff only.
    unreachable: u32,
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Final: report the failure.
    GiveUp,
    /// The token was refused: wait for the auth gate, then try again.
    AwaitAuth,
    /// HA never saw the call: wait for backoff step `step` or until HA
    /// answers again, spending no attempt.
    AwaitHa { step: u32 },
    /// Try again after backoff step `step`, at least `at_least`
    /// (`Retry-After`); `pause_all` holds every call (a 429).
    Retry { step: u32, at_least: Duration, pause_all: bool },
}

/// The retry decision after one failed attempt: pure, so its table is tested
/// without HTTP or time.
fn next_after(error: &HaError, idempotent: bool, spent: &mut Spent, max_attempts: NonZeroU32) -> Next {
    match error.retry(idempotent) {
        Retry::No => Next::GiveUp,
        Retry::AfterAuth => Next::AwaitAuth,
        // HA restarting, updating, network down: wait until it answers or
        // the command expires (`queue.max_age`).
        Retry::Backoff if error.kind == HaErrorKind::Connect => {
            spent.unreachable += 1;
            Next::AwaitHa { step: spent.unreachable - 1 }
        }
        Retry::Backoff => {
            spent.attempts += 1;
            if spent.attempts >= max_attempts.get() {
                return Next::GiveUp;
            }
            Next::Retry {
                step: spent.attempts - 1,
                at_least: error.retry_after.unwrap_or_default(),
                pause_all: error.kind == HaErrorKind::RateLimited,
            }
        }
    }
}

/// The outcome of a call HA answered with 2xx. Asked for a response and
/// given none, HA ignored `?return_response` (before 2024.8): the service
/// ran, but the command did not get what it asked for.
fn answered(response: CallResponse, return_response: bool, action: &Action) -> Outcome {
    let CallResponse { status, changed, response } = response;
    if return_response && response.is_none() {
        let detail = Refusal::OldHa.detail(&action.name());
        return Outcome { changed, ..Outcome::failed(ErrorCode::ResponseUnsupported, Some(status), detail) };
    }
    Outcome { response, ..Outcome::done(status, changed) }
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
        HaErrorKind::RateLimited | HaErrorKind::Server | HaErrorKind::Connect | HaErrorKind::Tls => {
            ErrorCode::HaUnavailable
        }
    };
    Outcome::failed(code, e.status, e.message)
}

/// The loop around [`Executor::execute`], with route flow control:
/// throttle (drop over the rate), debounce (only the last of a burst runs)
/// and latest-wins (a newer call replaces one still waiting).
pub struct Dispatcher {
    pub executor: Arc<Executor>,
    pub concurrency: NonZeroU32,
}

/// The dispatcher's state between loop turns.
///
/// Flow keys name a route's target, so they carry entity ids from topics and
/// payloads: a hostile publisher can make any number of them. `coalescible`
/// and `debouncing` hold one entry per command waiting here (an entry of
/// `coalescible` goes when its command is popped), and every command holds
/// a queue slot until its report is published, so each is bounded by the
/// slots held (`queue.capacity`); `throttle` holds no command and forgets
/// what it no longer needs.
#[derive(Default)]
struct Queue {
    book: OrderBook,
    waiting: HashMap<u64, Command>,
    /// latest_wins: flow key → id of the waiting command it may replace.
    coalescible: HashMap<String, u64>,
    /// debounce: flow key → the last command and when it may go.
    debouncing: HashMap<String, (Command, Instant)>,
    throttle: Throttle,
}

/// throttle: flow key → until when its window is open (calls dropped).
///
/// A key whose window has passed carries no information, so entries are
/// swept out once the map has doubled since the last sweep: each sweep
/// costs at most twice the insertions since the one before (amortised O(1)),
/// and the map holds at most twice the keys let through within one window
/// (at least [`Throttle::SWEEP_FROM`]).
#[derive(Default)]
struct Throttle {
    open_until: HashMap<String, Instant>,
    /// Entries left by the last sweep.
    swept_to: usize,
}

impl Throttle {
    /// Below this many entries no sweep is worth it.
    const SWEEP_FROM: usize = 1024;

    /// Whether a call for `key` may pass now; if so its window of `every` opens.
    fn pass(&mut self, key: &str, every: std::time::Duration, now: Instant) -> bool {
        if self.open_until.get(key).is_some_and(|until| now < *until) {
            return false;
        }
        self.open_until.insert(key.to_owned(), now + every);
        if self.open_until.len() >= Self::SWEEP_FROM.max(2 * self.swept_to) {
            self.open_until.retain(|_, until| now < *until);
            self.swept_to = self.open_until.len();
        }
        true
    }
}

/// A command that ends without running, for flow control.
fn dropped(command: Command, code: ErrorCode) -> Report {
    report(command, Outcome::failed(code, None, None), None)
}

fn report(command: Command, outcome: Outcome, call: Option<Value>) -> Report {
    Report {
        seq: command.seq,
        service: Some(command.action.result_service()),
        get: matches!(command.action, Action::Get(_)),
        topic: None,
        reply: command.reply,
        outcome,
        received_at: command.received_at,
        slot: Some(command.slot),
        route: command.route,
        call,
        origin: Some(command.origin),
        action: Some(command.action),
        backlog: None,
    }
}

impl Queue {
    /// Admits a command through throttle and debounce; reports what they drop.
    fn admit(&mut self, cmd: Command, out: &mpsc::UnboundedSender<Report>) {
        let Some((spec, key)) = cmd.flow.clone() else {
            self.insert(cmd, out);
            return;
        };
        let now = Instant::now();
        if let Some(every) = spec.throttle {
            if !self.throttle.pass(&key, every, now) {
                let _ = out.send(dropped(cmd, ErrorCode::Throttled));
                return;
            }
        }
        if let Some(quiet) = spec.debounce {
            if let Some((older, _)) = self.debouncing.insert(key, (cmd, now + quiet)) {
                let _ = out.send(dropped(older, ErrorCode::Debounced));
            }
            return;
        }
        self.insert(cmd, out);
    }

    /// Into the order book, or in place of a waiting command (latest_wins).
    fn insert(&mut self, mut cmd: Command, out: &mpsc::UnboundedSender<Report>) {
        let coalesce = cmd.flow.as_ref().filter(|(spec, _)| spec.latest_wins && cmd.action.is_idempotent());
        if let Some((_, key)) = coalesce {
            let key = key.clone();
            if let Some(older) = self.coalescible.get(&key).and_then(|id| self.waiting.remove(id)) {
                // Same route and target: the newer call takes the older one's place in line.
                cmd.id = older.id;
                let _ = out.send(dropped(older, ErrorCode::Coalesced));
                self.waiting.insert(cmd.id, cmd);
                return;
            }
            self.coalescible.insert(key, cmd.id);
        }
        self.book.insert(cmd.id, cmd.action.order_keys());
        self.waiting.insert(cmd.id, cmd);
    }

    /// Debounced commands whose quiet time is over go into the queue.
    fn release_debounced(&mut self, out: &mpsc::UnboundedSender<Report>) {
        let now = Instant::now();
        let due: Vec<String> =
            self.debouncing.iter().filter(|(_, (_, at))| *at <= now).map(|(k, _)| k.clone()).collect();
        for key in due {
            if let Some((cmd, _)) = self.debouncing.remove(&key) {
                self.insert(cmd, out);
            }
        }
    }

    fn next_debounce(&self) -> Option<Instant> {
        self.debouncing.values().map(|(_, at)| *at).min()
    }

    /// The next command free to start.
    fn pop(&mut self) -> Option<Command> {
        let id = self.book.pop_ready()?;
        let cmd = self.waiting.remove(&id).expect("every ready id has a waiting command");
        if let Some((_, key)) = &cmd.flow {
            if self.coalescible.get(key) == Some(&id) {
                self.coalescible.remove(key);
            }
        }
        Some(cmd)
    }
}

impl Dispatcher {
    /// Runs until `input` closes (shutdown) and the calls in flight finish.
    /// Commands still waiting then are dropped unacknowledged: the broker
    /// redelivers them to the next session.
    pub async fn run(self, mut input: mpsc::UnboundedReceiver<Command>, output: mpsc::UnboundedSender<Report>) {
        let mut q = Queue::default();
        let mut running: JoinSet<Finished> = JoinSet::new();
        let mut open = true;
        let dry_run = self.executor.dry_run;
        loop {
            while open && running.len() < self.concurrency.get() as usize {
                let Some(command) = q.pop() else { break };
                let executor = Arc::clone(&self.executor);
                running.spawn(async move {
                    let outcome = executor.execute(&command).await;
                    Finished { command, outcome }
                });
            }
            let debounce_at = q.next_debounce();
            // Each wake takes everything already there: under load one turn
            // of this loop serves many commands.
            tokio::select! {
                cmd = input.recv(), if open => match cmd {
                    Some(cmd) => {
                        q.admit(cmd, &output);
                        while let Ok(cmd) = input.try_recv() {
                            q.admit(cmd, &output);
                        }
                    }
                    None => open = false,
                },
                Some(joined) = running.join_next() => {
                    let mut joined = Some(joined);
                    while let Some(j) = joined.take().or_else(|| running.try_join_next()) {
                        let Finished { command, outcome } = j.expect("execute never panics");
                        q.book.finish(command.id);
                        let call = match (&command.action, dry_run) {
                            (Action::Call(c), true) => Some(serde_json::json!({"service": c.name(), "data": c.data})),
                            _ => None,
                        };
                        if output.send(report(command, outcome, call)).is_err() {
                            tracing::error!("publisher is gone; outcome lost (the broker redelivers the command)");
                        }
                    }
                }
                _ = tokio::time::sleep_until(debounce_at.unwrap_or_else(Instant::now)), if debounce_at.is_some() && open => {
                    q.release_debounced(&output);
                }
                else => break,
            }
            if !open && running.is_empty() {
                let left = q.waiting.len() + q.debouncing.len();
                if left > 0 {
                    tracing::info!(count = left, "left unstarted at shutdown; the broker redelivers them");
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::command::{Origin, ReplyTo, ServiceCall};
    use crate::routes::FlowSpec;
    use crate::topic::Slug;
    use HaErrorKind::*;

    fn throttled(id: u64, device: &str, every: Duration) -> Command {
        let data = serde_json::json!({"entity_id": format!("light.{device}")});
        let call = ServiceCall::new(
            Slug::parse("light").unwrap(),
            Slug::parse("turn_on").unwrap(),
            data.as_object().unwrap().clone(),
        );
        let flow = FlowSpec { throttle: Some(every), ..FlowSpec::default() };
        let now = Instant::now();
        Command {
            id,
            seq: id,
            action: Action::Call(call),
            reply: ReplyTo::default(),
            received_at: now,
            deadline: now + Duration::from_secs(60),
            route: Some(Arc::from("lights")),
            flow: Some((flow, format!("lights|light.turn_on|light.{device}"))),
            origin: Origin::default(),
            slot: Arc::new(Slots::new(1, None)).take(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_forgets_keys_whose_window_has_passed() {
        let (out, mut reports) = mpsc::unbounded_channel();
        let mut q = Queue::default();
        let every = Duration::from_secs(1);
        let devices = 10_000u64;
        for i in 0..devices {
            q.admit(throttled(i, &format!("d{i}"), every), &out);
        }
        assert_eq!(q.waiting.len(), devices as usize, "distinct devices are not throttled");
        assert!(reports.try_recv().is_err(), "nothing dropped");
        q.admit(throttled(devices, "d0", every), &out);
        let dropped = reports.try_recv().expect("within its window d0 is throttled");
        assert_eq!(dropped.outcome.error, Some(ErrorCode::Throttled));

        // Past the window every remembered pass carries no information.
        tokio::time::advance(every + Duration::from_millis(1)).await;
        for i in 0..devices {
            q.admit(throttled(devices + 1 + i, &format!("e{i}"), every), &out);
        }
        assert!(
            q.throttle.open_until.len() <= 2 * devices as usize - devices as usize / 2,
            "expired throttle entries are pruned: {} remembered",
            q.throttle.open_until.len()
        );
        q.admit(throttled(3 * devices, "d0", every), &out);
        assert!(reports.try_recv().is_err(), "after its window d0 passes again");
    }

    fn error(kind: HaErrorKind, retry_after: Option<u64>) -> HaError {
        HaError { kind, status: None, retry_after: retry_after.map(Duration::from_secs), message: String::new() }
    }

    /// An executor whose HA is never reached: these tests end before any call.
    fn executor(rate: Option<u32>) -> Executor {
        let vars = [("MQTT_HA_GATEWAY_HOME_ASSISTANT__TOKEN".to_owned(), "abc".to_owned())];
        let config = crate::config::load(std::path::Path::new("absent.toml"), false, vars).expect("defaults are valid");
        let ha = &config.home_assistant;
        let (_, token) = tokio::sync::watch::channel(secrecy::SecretString::from("abc"));
        let one = NonZeroU32::new(1).unwrap();
        Executor {
            ha: HaClient::new(ha, crate::ha::AuthGate::new(ha.auth_backoff, token)).unwrap(),
            limiter: RateLimiter::new(rate.and_then(NonZeroU32::new), one),
            max_attempts: ha.max_attempts,
            retry: ha.retry,
            metrics: Metrics::new(),
            health: Arc::new(Health::default()),
            shutdown: CancellationToken::new(),
            dry_run: false,
        }
    }

    fn command_due_in(deadline: Duration) -> Command {
        let mut cmd = throttled(1, "x", Duration::from_secs(1));
        cmd.flow = None;
        cmd.deadline = Instant::now() + deadline;
        cmd
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_past_its_deadline_expires_without_a_call() {
        let executor = executor(None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let cmd = command_due_in(Duration::ZERO);
        let outcome = executor.execute(&cmd).await;
        assert_eq!((outcome.error, outcome.attempts), (Some(ErrorCode::Expired), 0));
    }

    /// The rate limit would let it go after its deadline: it expires at the
    /// deadline, not after the wait, and never reaches HA.
    #[tokio::test(start_paused = true)]
    async fn a_command_expires_at_its_deadline_while_waiting_for_the_rate_limit() {
        let executor = executor(Some(1));
        let _ = executor.limiter.reserve(); // the burst of one is spent
        let start = Instant::now();
        let outcome = executor.execute(&command_due_in(Duration::from_millis(400))).await;
        assert_eq!((outcome.error, outcome.attempts), (Some(ErrorCode::Expired), 0));
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    /// A command that expires while it waits for the rate limit never uses
    /// its token: it gives it back, so the next command waits for the slot
    /// the expired one had, not the one after it (after a flood, the
    /// limiter used to stay in debt by every expired command's token).
    #[tokio::test(start_paused = true)]
    async fn a_command_that_expires_waiting_for_the_rate_limit_gives_its_token_back() {
        let executor = executor(Some(1));
        let _ = executor.limiter.reserve(); // the burst of one is spent: the next slot is in 1 s
        let outcome = executor.execute(&command_due_in(Duration::from_millis(400))).await;
        assert_eq!(outcome.error, Some(ErrorCode::Expired));
        assert_eq!(executor.limiter.reserve(), Duration::from_millis(600), "the expired command's slot, 600 ms on");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_rate_limit_wait_unacked() {
        let executor = executor(Some(1));
        let _ = executor.limiter.reserve();
        executor.shutdown.cancel();
        let outcome = executor.execute(&command_due_in(Duration::from_secs(60))).await;
        assert_eq!((outcome.error, outcome.attempts), (Some(ErrorCode::ShuttingDown), 0));
    }

    /// (kind, idempotent, Retry-After, spent before, max_attempts) → next, spent after.
    #[test]
    fn retry_decisions() {
        let s = |attempts, unreachable| Spent { attempts, unreachable };
        let retry = |step, secs, pause_all| Next::Retry { step, at_least: Duration::from_secs(secs), pause_all };
        let table = [
            (Rejected, true, None, s(0, 0), 3, Next::GiveUp, s(0, 0)),
            (InvalidResponse, true, None, s(0, 0), 3, Next::GiveUp, s(0, 0)),
            (Tls, true, None, s(0, 0), 3, Next::GiveUp, s(0, 0)),
            (Unauthorized, true, None, s(1, 0), 3, Next::AwaitAuth, s(1, 0)),
            (Server, true, None, s(0, 0), 3, retry(0, 0, false), s(1, 0)),
            (Server, false, None, s(1, 0), 3, retry(1, 0, false), s(2, 0)),
            (Server, true, None, s(2, 0), 3, Next::GiveUp, s(3, 0)),
            (Server, true, None, s(0, 0), 1, Next::GiveUp, s(1, 0)),
            (RateLimited, true, Some(2), s(0, 0), 3, retry(0, 2, true), s(1, 0)),
            (Timeout, true, None, s(0, 0), 3, retry(0, 0, false), s(1, 0)),
            (Timeout, false, None, s(0, 0), 3, Next::GiveUp, s(0, 0)),
            (Transport, false, None, s(0, 0), 3, Next::GiveUp, s(0, 0)),
            // Connection refused spends no attempt, however many.
            (Connect, true, None, s(2, 0), 3, Next::AwaitHa { step: 0 }, s(2, 1)),
            (Connect, false, None, s(0, 40), 1, Next::AwaitHa { step: 40 }, s(0, 41)),
        ];
        for (kind, idempotent, after, before, max, want, spent_after) in table {
            let mut spent = before;
            let max = NonZeroU32::new(max).unwrap();
            let got = next_after(&error(kind, after), idempotent, &mut spent, max);
            assert_eq!((got, spent), (want, spent_after), "{kind:?} idempotent={idempotent} after {before:?}");
        }
    }
}
