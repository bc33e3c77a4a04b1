//! Keeps the current token: read at start, re-read from `token_file` when its
//! content changes (polled) or on request (SIGHUP), published on a watch
//! channel so the next call uses it.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::secret::SecretSource;

/// How often `token_file` is looked at.
pub const POLL: Duration = Duration::from_secs(2);

/// The channel the HA client reads its token from, filled with the current one.
pub fn token_channel(
    source: &SecretSource,
) -> std::io::Result<(watch::Sender<SecretString>, watch::Receiver<SecretString>)> {
    Ok(watch::channel(source.read()?))
}

/// Re-reads a file token until `shutdown`; an inline token never changes.
pub async fn watch_token(
    source: SecretSource,
    tx: watch::Sender<SecretString>,
    mut reload: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    if matches!(source, SecretSource::Inline(_)) {
        // Nothing to watch; a stage ends only at shutdown.
        shutdown.cancelled().await;
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
            Ok(()) = reload.changed() => {}
        }
        match source.read() {
            Ok(token) => {
                let changed = tx.borrow().expose_secret() != token.expose_secret();
                if changed {
                    tracing::info!("token file changed; using the new token");
                    tx.send_replace(token);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-read the token file; keeping the current token")
            }
        }
    }
}
