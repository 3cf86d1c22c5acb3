//! Killing a command inside its pod through a second exec: closing the command's own stream
//! would leave it running on a real kubelet.

use std::time::Duration;

use domain::ports::ExecRequest;
use kube::api::AttachParams;
use tokio::io::AsyncReadExt;

use crate::error::{bounded, KubeError};
use crate::wrapper::kill_argv;
use crate::KubeBackend;

/// Tries before giving up on killing a command (the API may blip right then).
const KILL_ATTEMPTS: u32 = 3;

/// Pause between two kill attempts.
const KILL_RETRY_PAUSE: Duration = Duration::from_millis(300);

/// Most stderr kept from the kill script, for the log.
const KILL_STDERR_BYTES: u64 = 4096;

impl KubeBackend {
    /// Kills every process of `request`'s command in pod `pod` (all that carry its tracking
    /// cookie): SIGTERM, up to the kill grace, then stop, rescan until stable and SIGKILL. A pod
    /// that is gone has nothing left to kill.
    ///
    /// # Errors
    /// The last failure when no attempt got the kill script to finish.
    pub(crate) async fn kill_in_pod(&self, pod: &str, request: &ExecRequest) -> Result<(), KubeError> {
        let mut last = None;
        for attempt in 1..=KILL_ATTEMPTS {
            match self.kill_once(pod, request).await {
                Ok(()) => return Ok(()),
                Err(KubeError::NotFound(_) | KubeError::PodGone(_)) => return Ok(()),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "killing the command in its pod failed");
                    last = Some(e);
                }
            }
            tokio::time::sleep(KILL_RETRY_PAUSE).await;
        }
        Err(last.unwrap_or_else(|| KubeError::ApiUnavailable("the kill never ran".into())))
    }

    async fn kill_once(&self, pod: &str, request: &ExecRequest) -> Result<(), KubeError> {
        let config = &self.config;
        let argv = kill_argv(request, &config.state_dir, config.kill_grace);
        // The apiserver wants at least one stream; stderr doubles as the script's error report.
        let params = AttachParams::default().container(&config.container_name).stdout(false).stderr(true);
        let mut process = bounded("kill exec", config.api_timeout, self.pods.exec(pod, argv, &params)).await?;
        let status = process.take_status();
        let mut stderr = Vec::new();
        let read_stderr = async {
            if let Some(pipe) = process.stderr() {
                let _ = pipe.take(KILL_STDERR_BYTES).read_to_end(&mut stderr).await;
            }
        };
        // The script itself waits up to the grace; the rest is for the round trips.
        let limit = config.kill_grace + config.api_timeout;
        let ended = tokio::time::timeout(limit, async {
            let (status, ()) = tokio::join!(
                async {
                    if let Some(s) = status {
                        s.await
                    } else {
                        None
                    }
                },
                read_stderr
            );
            status
        })
        .await
        .map_err(|_| KubeError::timed_out("the kill script", limit))?;
        match crate::exit::stream_end(ended) {
            crate::exit::StreamEnd::Exited(0) => Ok(()),
            other => Err(KubeError::Api {
                code: 0,
                message: format!("kill script ended with {other:?}: {}", String::from_utf8_lossy(&stderr).trim()),
            }),
        }
    }
}
