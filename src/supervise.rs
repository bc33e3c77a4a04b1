//! Supervision: every stage of the gateway is a task with a name, and a
//! stage that ends before shutdown — by panicking or by returning — is
//! fatal. The gateway then reports itself dead (`/healthz` 503), drains what
//! it can and exits with [`EXIT_STAGE_FAILED`], so Docker, systemd or
//! Kubernetes restarts it. Nothing is lost by exiting: unacked commands stay
//! with the broker, which redelivers them to the next process.
//!
//! This module knows no stage; `app` names and spawns them. It must not
//! decide what a failure means for the data path beyond "stop everything".

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// Exit code of a process whose stage failed (EX_SOFTWARE).
pub const EXIT_STAGE_FAILED: u8 = 70;

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub stage: &'static str,
    /// The panic message, when it panicked; `None` when it returned.
    pub panic: Option<String>,
}

/// The fatal error of a run: the first stage that ended before shutdown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stage {} {}", .0.stage, match &.0.panic { Some(p) => format!("panicked: {p}"), None => "ended before shutdown".to_owned() })]
pub struct StageFailed(pub Ended);

/// Makes one named stage panic when `trigger` is cancelled: for tests of
/// supervision only (the binary honours it in debug builds alone).
#[derive(Debug, Clone)]
pub struct FailStage {
    pub stage: String,
    pub trigger: CancellationToken,
}

/// A group of named stage tasks.
#[derive(Debug, Default)]
pub struct Stages {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    fail: Option<FailStage>,
}

impl Stages {
    pub fn new(fail: Option<FailStage>) -> Self {
        Self { fail, ..Self::default() }
    }

    /// Spawns `stage` under `name`.
    pub fn spawn(&mut self, name: &'static str, stage: impl Future<Output = ()> + Send + 'static) {
        let trigger = self.fail.as_ref().filter(|f| f.stage == name).map(|f| f.trigger.clone());
        let handle = match trigger {
            None => self.set.spawn(stage),
            Some(trigger) => self.set.spawn(async move {
                tokio::select! {
                    () = stage => {}
                    () = trigger.cancelled() => panic!("failure injected into stage {name}"),
                }
            }),
        };
        self.names.insert(handle.id(), name);
    }

    /// The next stage to end; `None` when none is left.
    pub async fn next(&mut self) -> Option<Ended> {
        let joined = self.set.join_next_with_id().await?;
        Some(match joined {
            Ok((id, ())) => Ended { stage: self.name(id), panic: None },
            Err(e) => Ended { stage: self.name(e.id()), panic: Some(panic_message(e)) },
        })
    }

    /// Waits until every stage has ended, logging those that panicked.
    pub async fn join_all(&mut self) {
        while let Some(ended) = self.next().await {
            if let Some(panic) = &ended.panic {
                tracing::error!(stage = ended.stage, panic = %panic, "stage panicked while stopping");
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    fn name(&mut self, id: Id) -> &'static str {
        self.names.remove(&id).unwrap_or("unknown")
    }
}

fn panic_message(e: JoinError) -> String {
    if e.is_cancelled() {
        return "cancelled".to_owned();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stage_that_panics_or_returns_is_named() {
        let fail = FailStage { stage: "publisher".into(), trigger: CancellationToken::new() };
        fail.trigger.cancel();
        let mut stages = Stages::new(Some(fail));
        stages.spawn("publisher", std::future::pending());
        let ended = stages.next().await.unwrap();
        assert_eq!(ended.stage, "publisher");
        assert_eq!(ended.panic.as_deref(), Some("failure injected into stage publisher"));

        stages.spawn("acker", async {});
        assert_eq!(stages.next().await, Some(Ended { stage: "acker", panic: None }));
        assert!(stages.is_empty());
        assert_eq!(stages.next().await, None);
    }

    #[test]
    fn the_error_says_which_stage_and_how() {
        let panicked = StageFailed(Ended { stage: "acker", panic: Some("boom".into()) });
        assert_eq!(panicked.to_string(), "stage acker panicked: boom");
        let returned = StageFailed(Ended { stage: "mirror", panic: None });
        assert_eq!(returned.to_string(), "stage mirror ended before shutdown");
    }
}
