//! The state machine of a run: statuses and their legal transitions, why a run ended, and the
//! one mapping from what the executor saw to the command's terminal state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{DomainError, DomainResult};

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Waiting in the queue.
    Queued,
    /// Claimed by a worker and executing.
    Running,
    /// Exited 0.
    Succeeded,
    /// Ended any other way that is the command's own doing (non-zero, signal, could not start).
    Failed,
    /// Killed at its timeout.
    TimedOut,
    /// Cancelled by a client.
    Cancelled,
    /// The replica running it died and its lease ran out.
    Lost,
}

impl CommandStatus {
    /// Every status, in life order.
    pub const ALL: [CommandStatus; 7] =
        [Self::Queued, Self::Running, Self::Succeeded, Self::Failed, Self::TimedOut, Self::Cancelled, Self::Lost];

    /// Whether the command has ended.
    pub const fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The legal transitions of the state machine.
    pub const fn can_become(self, next: CommandStatus) -> bool {
        match self {
            Self::Queued => matches!(next, Self::Running | Self::Cancelled),
            Self::Running => next.is_terminal(),
            _ => false,
        }
    }

    /// Name on the wire and in stores.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Lost => "lost",
        }
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CommandStatus {
    type Err = DomainError;
    fn from_str(s: &str) -> DomainResult<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            DomainError::invalid(
                "status",
                "must be one of queued, running, succeeded, failed, timed_out, cancelled, lost",
            )
        })
    }
}

/// Why a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    /// The process exited by itself.
    Exited,
    /// Killed at its timeout.
    Timeout,
    /// Killed or dropped on a client's request.
    Cancelled,
    /// Ended by a signal.
    Signal,
    /// Killed by the kernel's OOM killer.
    OomKilled,
    /// The worker running it went away, or lost track of the process.
    WorkerLost,
    /// The pod disappeared under it.
    PodGone,
    /// It never started (cwd missing, program not found).
    StartFailed,
    /// Its replica shut down before it finished, and killed it.
    ReplicaShutdown,
}

impl TerminationReason {
    /// Every reason.
    pub const ALL: [TerminationReason; 9] = [
        Self::Exited,
        Self::Timeout,
        Self::Cancelled,
        Self::Signal,
        Self::OomKilled,
        Self::WorkerLost,
        Self::PodGone,
        Self::StartFailed,
        Self::ReplicaShutdown,
    ];

    /// Name on the wire and in stores.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Signal => "signal",
            Self::OomKilled => "oom_killed",
            Self::WorkerLost => "worker_lost",
            Self::PodGone => "pod_gone",
            Self::StartFailed => "start_failed",
            Self::ReplicaShutdown => "replica_shutdown",
        }
    }
}

impl FromStr for TerminationReason {
    type Err = DomainError;
    fn from_str(s: &str) -> DomainResult<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| DomainError::Internal(format!("unknown termination reason {s}")))
    }
}

/// The error of a command whose replica went away (its session with the store ended).
pub const ABSENT_OWNER_LOST: &str = "the replica running the command went away: its session with the store ended";
/// The error of a command whose worker stopped renewing its lease.
pub const LEASE_EXPIRED_LOST: &str = "the worker running the command stopped renewing its lease";
/// The error of a command its replica killed when its shutdown grace ran out.
pub const REPLICA_SHUT_DOWN: &str = "replica shut down";

/// How an execution ended, as the executor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    /// Exited with this status code.
    Exited(i32),
    /// Killed by this signal (not by rdev-api).
    Signaled(i32),
    /// rdev-api killed it at its timeout.
    TimedOut,
    /// rdev-api killed it on a cancel request.
    Cancelled,
    /// It could not be started; the text says why.
    StartFailed(String),
    /// The kernel's OOM killer ended it.
    OomKilled,
    /// The pod went away while it ran.
    PodGone(String),
    /// The executor lost track of it: no exit status arrived.
    Unknown(String),
    /// The backend could not be reached before anything started; the command may go back to
    /// the queue (it ends `start_failed` when it does not).
    Unreachable(String),
}

/// Final state a termination maps to: status, exit code, reason, and an error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Terminal status.
    pub status: CommandStatus,
    /// The process's exit code when one really arrived; never invented.
    pub exit_code: Option<i32>,
    /// Why it ended.
    pub reason: TerminationReason,
    /// Human-readable detail for failures that are not exit codes.
    pub error: Option<String>,
}

impl Termination {
    /// Maps the executor's view to the command's terminal state. An exit status that never
    /// arrived is never reported as 0.
    pub fn completion(&self) -> Completion {
        use TerminationReason as R;
        let (status, exit_code, reason, error) = match self {
            Self::Exited(0) => (CommandStatus::Succeeded, Some(0), R::Exited, None),
            Self::Exited(code) => (CommandStatus::Failed, Some(*code), R::Exited, None),
            Self::Signaled(sig) => (CommandStatus::Failed, None, R::Signal, Some(format!("killed by signal {sig}"))),
            Self::TimedOut => (CommandStatus::TimedOut, None, R::Timeout, None),
            Self::Cancelled => (CommandStatus::Cancelled, None, R::Cancelled, None),
            Self::StartFailed(why) => (CommandStatus::Failed, None, R::StartFailed, Some(why.clone())),
            Self::OomKilled => (CommandStatus::Failed, None, R::OomKilled, Some("killed by the OOM killer".into())),
            Self::PodGone(why) => (CommandStatus::Failed, None, R::PodGone, Some(why.clone())),
            Self::Unknown(why) => (CommandStatus::Failed, None, R::WorkerLost, Some(why.clone())),
            Self::Unreachable(why) => (CommandStatus::Failed, None, R::StartFailed, Some(why.clone())),
        };
        Completion { status, exit_code, reason, error }
    }
}

impl Completion {
    /// How a command whose worker went away ends: `lost`, reason `worker_lost`, no exit code,
    /// `error` saying why ([`ABSENT_OWNER_LOST`] or [`LEASE_EXPIRED_LOST`]).
    pub fn worker_lost(error: &str) -> Self {
        Self {
            status: CommandStatus::Lost,
            exit_code: None,
            reason: TerminationReason::WorkerLost,
            error: Some(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_legal_transitions_are_allowed() {
        use CommandStatus::*;
        assert!(Queued.can_become(Running));
        assert!(Queued.can_become(Cancelled));
        assert!(!Queued.can_become(Succeeded));
        assert!(Running.can_become(Lost));
        assert!(!Running.can_become(Queued));
        for terminal in [Succeeded, Failed, TimedOut, Cancelled, Lost] {
            assert!(CommandStatus::ALL.iter().all(|n| !terminal.can_become(*n)));
        }
    }

    #[test]
    fn missing_exit_status_is_never_success() {
        for t in
            [Termination::Unknown("no status".into()), Termination::PodGone("gone".into()), Termination::Signaled(9)]
        {
            let c = t.completion();
            assert_eq!(c.status, CommandStatus::Failed);
            assert_eq!(c.exit_code, None);
        }
        assert_eq!(Termination::Exited(0).completion().status, CommandStatus::Succeeded);
        assert_eq!(Termination::Exited(3).completion().exit_code, Some(3));
    }

    proptest! {
        #[test]
        fn status_names_round_trip(i in 0usize..7) {
            let s = CommandStatus::ALL[i];
            prop_assert_eq!(s.as_str().parse::<CommandStatus>(), Ok(s));
        }
    }
}
