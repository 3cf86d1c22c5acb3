//! Killing a command's whole process group, so background children die with it.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;

/// How long to wait for the child to be reaped after SIGKILL; only a process stuck in the
/// kernel (uninterruptible sleep) takes longer, and the executor must not hang on it.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `signal` to every process in `group`. A group that is already gone is not an error.
pub(crate) fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid = group.as_raw(), ?signal, error = %e, "cannot signal the process group"),
    }
}

/// SIGTERM to the group, up to `grace` for the child to exit, then SIGKILL to the group.
///
/// The SIGKILL goes out even when the child left early: grandchildren may ignore SIGTERM. The
/// group id cannot be recycled meanwhile while any member lives, and the leader is reaped only
/// just before, so the kill cannot reach a stranger's group in practice.
pub(crate) async fn terminate(child: &mut Child, group: Pid, grace: Duration) {
    signal_group(group, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::debug!(pgid = group.as_raw(), ?grace, "command outlived SIGTERM; sending SIGKILL");
    }
    signal_group(group, Signal::SIGKILL);
    match tokio::time::timeout(REAP_TIMEOUT, child.wait()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(pgid = group.as_raw(), error = %e, "cannot reap the killed command"),
        Err(_) => tracing::warn!(pgid = group.as_raw(), "killed command was not reaped in time"),
    }
}

/// Kills the group with SIGKILL when dropped while armed: if the run is abandoned (its future
/// dropped at shutdown), no part of the command keeps running unsupervised.
#[derive(Debug)]
pub(crate) struct GroupGuard {
    group: Pid,
    armed: bool,
}

impl GroupGuard {
    /// An armed guard over `group`.
    pub(crate) fn new(group: Pid) -> Self {
        Self { group, armed: true }
    }

    /// The run finished its own way (exit or kill); leave the group alone.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            tracing::warn!(pgid = self.group.as_raw(), "run abandoned; killing its process group");
            signal_group(self.group, Signal::SIGKILL);
        }
    }
}
