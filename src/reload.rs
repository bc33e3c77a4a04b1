//! Reloading rules without a restart: on SIGHUP, or when the config file or
//! `routes.d/` changes, the config is loaded and validated again; if valid,
//! the new access rules and routes replace the old ones (queued commands keep
//! what they were admitted with: nothing is lost or run twice). An invalid
//! config is refused with every problem logged, and the old rules stay.
//!
//! Other settings (broker, HA URL, queue sizes…) take effect at the next start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admission::Rules;
use crate::config::{Config, ConfigErrors};
use crate::metrics::Metrics;
use crate::ui::{ConfigState, ReloadOutcome};

/// How often the config files are looked at.
pub const POLL: Duration = Duration::from_secs(2);

/// Loads the config again (from the same file and environment).
pub type Loader = Box<dyn Fn() -> Result<Config, ConfigErrors> + Send + Sync>;

/// What to reload from, and which files to watch.
pub struct Reloader {
    pub load: Loader,
    pub watch: Vec<PathBuf>,
}

/// Modification times of the watched files and of the files in watched directories.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut out = Vec::new();
    for p in paths {
        let modified = std::fs::metadata(p).and_then(|m| m.modified()).ok();
        out.push((p.clone(), modified));
        if let Ok(entries) = std::fs::read_dir(p) {
            let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            out.extend(files.into_iter().map(|f| {
                let m = std::fs::metadata(&f).and_then(|m| m.modified()).ok();
                (f, m)
            }));
        }
    }
    out
}

impl Reloader {
    /// Watches until `shutdown`; sends new rules on `rules`; counts each
    /// reload in `mqtt_ha_gateway_config_reloads_total{result}`; tells the
    /// web console (`console`) the rules as loaded and each reload's outcome.
    pub async fn run(
        self,
        rules: watch::Sender<Arc<Rules>>,
        console: Option<watch::Sender<ConfigState>>,
        mut hup: watch::Receiver<u64>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) {
        let mut seen = fingerprint(&self.watch);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Ok(()) = hup.changed() => {}
                _ = tokio::time::sleep(POLL) => {
                    if fingerprint(&self.watch) == seen {
                        continue;
                    }
                }
            }
            seen = fingerprint(&self.watch);
            match (self.load)() {
                Ok(config) => {
                    let routes = config.routes.len();
                    if let Some(console) = &console {
                        console.send_replace(ConfigState {
                            rules: Arc::clone(&config.loaded_rules),
                            last_reload: Some(ReloadOutcome {
                                at: SystemTime::now(),
                                applied: true,
                                errors: Vec::new(),
                            }),
                        });
                    }
                    rules.send_replace(Arc::new(Rules { access: config.access, routes: config.routes }));
                    metrics.config_reloads.with_label_values(&["applied"]).inc();
                    tracing::info!(routes, "configuration reloaded: access rules and routes replaced");
                }
                Err(errors) => {
                    for e in &errors.0 {
                        tracing::error!(key = %e.key, problem = %e.message, "reload refused: invalid configuration");
                    }
                    metrics.config_reloads.with_label_values(&["refused"]).inc();
                    if let Some(console) = &console {
                        let errors = errors.0.iter().map(ToString::to_string).collect();
                        console.send_modify(|s| {
                            s.last_reload = Some(ReloadOutcome { at: SystemTime::now(), applied: false, errors });
                        });
                    }
                    tracing::error!(problems = errors.0.len(), "reload refused; the previous configuration stays");
                }
            }
        }
    }
}
