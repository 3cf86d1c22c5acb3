//! Commands: what to run, how urgently, and the state machine of a run.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::api_key::ApiKeyId;
use crate::ids::{CommandId, ProjectId};
use crate::project::ProjectName;
use crate::trace::TraceContext;
use crate::{DomainError, DomainResult, FieldError, Timestamp};

/// A command timeout in seconds, 1..=86400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct TimeoutSeconds(u32);

impl TimeoutSeconds {
    /// Longest allowed timeout: one day.
    pub const MAX: u32 = 86_400;

    /// Checks the range.
    pub fn new(seconds: u32) -> DomainResult<Self> {
        if (1..=Self::MAX).contains(&seconds) {
            Ok(Self(seconds))
        } else {
            Err(DomainError::invalid("timeout_seconds", "must be between 1 and 86400"))
        }
    }

    /// The timeout in seconds.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The timeout as a duration.
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.0))
    }
}

impl TryFrom<u32> for TimeoutSeconds {
    type Error = DomainError;
    fn try_from(v: u32) -> DomainResult<Self> {
        Self::new(v)
    }
}

impl From<TimeoutSeconds> for u32 {
    fn from(t: TimeoutSeconds) -> u32 {
        t.0
    }
}

/// Environment variables: POSIX names, values without NUL, bounded in count and size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct EnvMap(BTreeMap<String, String>);

impl EnvMap {
    /// Most variables one map may hold.
    pub const MAX_VARS: usize = 256;
    /// Longest value, in characters (as JSON Schema's `maxLength` counts).
    pub const MAX_VALUE_CHARS: usize = 32 * 1024;
    /// Longest variable name.
    pub const MAX_NAME_LEN: usize = 256;
    /// The grammar of a variable name, as an ECMA-262 regular expression.
    pub const NAME_PATTERN: &'static str = "^[A-Za-z_][A-Za-z0-9_]*$";

    /// Validates every name and value; errors name the offending variable.
    pub fn parse(vars: BTreeMap<String, String>) -> DomainResult<Self> {
        let mut errors = Vec::new();
        if vars.len() > Self::MAX_VARS {
            errors.push(FieldError::new("env", format!("at most {} variables", Self::MAX_VARS)));
        }
        for (name, value) in &vars {
            if !is_env_name(name) {
                errors.push(FieldError::new(
                    format!("env.{name}"),
                    "name must match ^[A-Za-z_][A-Za-z0-9_]*$ (at most 256 characters)",
                ));
            }
            if value.contains('\0') || value.chars().count() > Self::MAX_VALUE_CHARS {
                errors.push(FieldError::new(
                    format!("env.{name}"),
                    "value must not contain NUL and be at most 32768 characters",
                ));
            }
        }
        if errors.is_empty() {
            Ok(Self(vars))
        } else {
            Err(DomainError::Invalid(errors))
        }
    }

    /// Variables of `self` overridden by those of `other`.
    pub fn merged_with(&self, other: &EnvMap) -> EnvMap {
        let mut vars = self.0.clone();
        vars.extend(other.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        EnvMap(vars)
    }

    /// Iterates name/value pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// Whether a variable is set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= EnvMap::MAX_NAME_LEN
}

impl TryFrom<BTreeMap<String, String>> for EnvMap {
    type Error = DomainError;
    fn try_from(v: BTreeMap<String, String>) -> DomainResult<Self> {
        Self::parse(v)
    }
}

impl From<EnvMap> for BTreeMap<String, String> {
    fn from(e: EnvMap) -> Self {
        e.0
    }
}

/// How urgently a command should run; higher runs first, then older first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Ahead of normal work.
    High,
    /// Ahead of everything.
    Critical,
}

impl Priority {
    /// All priorities, highest first (the dequeue order).
    pub const ALL: [Priority; 4] = [Priority::Critical, Priority::High, Priority::Normal, Priority::Low];

    /// Numeric rank stored by adapters: a higher rank is dequeued first.
    pub const fn rank(self) -> i16 {
        match self {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
            Priority::Critical => 3,
        }
    }

    /// The priority of a stored rank.
    pub fn from_rank(rank: i16) -> DomainResult<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.rank() == rank)
            .ok_or_else(|| DomainError::Internal(format!("unknown priority rank {rank}")))
    }

    /// Name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl Ord for Priority {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The dequeue order: higher priority first, then the earlier enqueue sequence.
/// Returns `Less` when `a` must run before `b`.
pub fn dequeue_order(a: (Priority, i64), b: (Priority, i64)) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then(a.1.cmp(&b.1))
}

/// What to run: an argv vector (no shell) or a shell script run by `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandSpec {
    /// Program and arguments, executed directly.
    Argv(Vec<String>),
    /// Shell text for `sh -c`.
    Script(String),
}

impl CommandSpec {
    /// Most argv entries.
    pub const MAX_ARGS: usize = 4096;
    /// Largest argv total (bytes) or script (characters).
    pub const MAX_BYTES: usize = 256 * 1024;
    /// The characters a script needs one of besides: it must not be blank.
    pub const BLANK: [char; 6] = [' ', '\t', '\n', '\r', '\u{b}', '\u{c}'];

    /// Builds a spec from the request's `command` / `script` pair: exactly one must be given.
    pub fn parse(command: Option<Vec<String>>, script: Option<String>) -> DomainResult<Self> {
        match (command, script) {
            (Some(_), Some(_)) => Err(DomainError::invalid("command", "give either command or script, not both")),
            (None, None) => Err(DomainError::invalid("command", "one of command (argv array) or script is required")),
            (Some(argv), None) => Self::parse_argv(argv),
            (None, Some(script)) => Self::parse_script(script),
        }
    }

    fn parse_argv(argv: Vec<String>) -> DomainResult<Self> {
        let total: usize = argv.iter().map(String::len).sum();
        if argv.is_empty() || argv[0].is_empty() {
            Err(DomainError::invalid("command", "must be a non-empty array whose first element names a program"))
        } else if argv.len() > Self::MAX_ARGS || total > Self::MAX_BYTES {
            Err(DomainError::invalid("command", "at most 4096 arguments and 256 KiB in total"))
        } else if argv.iter().any(|a| a.contains('\0')) {
            Err(DomainError::invalid("command", "arguments must not contain NUL"))
        } else {
            Ok(Self::Argv(argv))
        }
    }

    fn parse_script(script: String) -> DomainResult<Self> {
        if script.chars().all(|c| Self::BLANK.contains(&c)) {
            Err(DomainError::invalid("script", "must not be empty"))
        } else if script.chars().count() > Self::MAX_BYTES || script.contains('\0') {
            Err(DomainError::invalid("script", "at most 256 KiB, without NUL"))
        } else {
            Ok(Self::Script(script))
        }
    }

    /// The argv that executes this spec (`sh -c <script>` for scripts).
    pub fn to_argv(&self) -> Vec<String> {
        match self {
            Self::Argv(argv) => argv.clone(),
            Self::Script(s) => vec!["sh".to_owned(), "-c".to_owned(), s.clone()],
        }
    }
}

/// Largest stdin a command may carry.
pub const MAX_STDIN_BYTES: usize = 1024 * 1024;

/// Longest `cwd`.
pub const MAX_CWD_CHARS: usize = 4096;

/// Validates a command's `cwd`: absolute or relative, no NUL, bounded.
pub fn validate_cwd(cwd: &str) -> DomainResult<()> {
    if cwd.is_empty() || cwd.chars().count() > MAX_CWD_CHARS || cwd.contains('\0') {
        Err(DomainError::invalid("cwd", "must be a non-empty path of at most 4096 characters without NUL"))
    } else {
        Ok(())
    }
}

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

/// Idempotency of an enqueue: the client's key and a fingerprint of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The `Idempotency-Key` header (1..=255 printable ASCII).
    pub key: String,
    /// SHA-256 (hex) of the canonical request; a replay with another body is a conflict.
    pub fingerprint: String,
}

impl Idempotency {
    /// How long a key replays its first result.
    pub const RETENTION: chrono::TimeDelta = chrono::TimeDelta::hours(24);

    /// Validates the header value.
    pub fn new(key: &str, fingerprint: String) -> DomainResult<Self> {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(DomainError::invalid("Idempotency-Key", "must be 1 to 255 printable ASCII characters"));
        }
        Ok(Self { key: key.to_owned(), fingerprint })
    }
}

/// A validated command ready to be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommand {
    /// Id assigned by the service.
    pub id: CommandId,
    /// Owning project.
    pub project_id: ProjectId,
    /// Owning project's name (denormalised for reads).
    pub project: ProjectName,
    /// What to run.
    pub spec: CommandSpec,
    /// Command environment (project env merged under it at run time).
    pub env: EnvMap,
    /// Working directory, absolute or relative to the project's workdir.
    pub cwd: Option<String>,
    /// Bytes fed to stdin.
    pub stdin: Option<String>,
    /// Kill after this long.
    pub timeout: TimeoutSeconds,
    /// Queue priority.
    pub priority: Priority,
    /// Key that asked for it (none from the CLI).
    pub created_by: Option<ApiKeyId>,
    /// Idempotency key, when the client sent one.
    pub idempotency: Option<Idempotency>,
    /// Enqueue time.
    pub queued_at: Timestamp,
    /// The project's effective queue cap: the store refuses the command with `QueueFull` when
    /// the project already has this many queued, checked atomically with the insert.
    pub max_queued: u32,
    /// The trace of the request that queued it, which its run on any replica joins.
    pub trace: Option<TraceContext>,
}

/// A command and everything known about its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Stable id.
    pub id: CommandId,
    /// Owning project.
    pub project_id: ProjectId,
    /// Owning project's name.
    pub project: ProjectName,
    /// What to run.
    pub spec: CommandSpec,
    /// Command environment.
    pub env: EnvMap,
    /// Working directory.
    pub cwd: Option<String>,
    /// Bytes fed to stdin.
    pub stdin: Option<String>,
    /// Timeout.
    pub timeout: TimeoutSeconds,
    /// Priority.
    pub priority: Priority,
    /// Current status.
    pub status: CommandStatus,
    /// Exit code, only when one really arrived.
    pub exit_code: Option<i32>,
    /// Why it ended.
    pub termination_reason: Option<TerminationReason>,
    /// Failure detail that is not an exit code.
    pub error: Option<String>,
    /// Key that asked for it.
    pub created_by: Option<ApiKeyId>,
    /// Whether a client asked to cancel it while it ran.
    pub cancel_requested: bool,
    /// Enqueue time.
    pub queued_at: Timestamp,
    /// Claim time.
    pub started_at: Option<Timestamp>,
    /// End time.
    pub finished_at: Option<Timestamp>,
    /// The trace of the request that queued it, which its run joins.
    pub trace: Option<TraceContext>,
}

impl NewCommand {
    /// The queued command this becomes once stored.
    pub fn into_command(self) -> Command {
        Command {
            id: self.id,
            project_id: self.project_id,
            project: self.project,
            spec: self.spec,
            env: self.env,
            cwd: self.cwd,
            stdin: self.stdin,
            timeout: self.timeout,
            priority: self.priority,
            status: CommandStatus::Queued,
            exit_code: None,
            termination_reason: None,
            error: None,
            created_by: self.created_by,
            cancel_requested: false,
            queued_at: self.queued_at,
            started_at: None,
            finished_at: None,
            trace: self.trace,
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

    #[test]
    fn spec_needs_exactly_one_form() {
        assert!(CommandSpec::parse(None, None).is_err());
        assert!(CommandSpec::parse(Some(vec!["ls".into()]), Some("ls".into())).is_err());
        assert!(CommandSpec::parse(Some(vec![]), None).is_err());
        assert!(CommandSpec::parse(Some(vec!["".into()]), None).is_err());
        assert!(CommandSpec::parse(None, Some("  ".into())).is_err());
        assert_eq!(
            CommandSpec::parse(None, Some("echo hi".into())).map(|s| s.to_argv()),
            Ok(vec!["sh".into(), "-c".into(), "echo hi".into()])
        );
    }

    #[test]
    fn env_names_are_posix() {
        let ok: BTreeMap<_, _> = [("A_1".to_string(), "x".to_string()), ("_b".into(), "".into())].into();
        assert!(EnvMap::parse(ok).is_ok());
        for bad in ["1A", "A-B", "", "A B"] {
            let m: BTreeMap<_, _> = [(bad.to_string(), "x".to_string())].into();
            assert!(EnvMap::parse(m).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timeouts_are_bounded() {
        assert!(TimeoutSeconds::new(0).is_err());
        assert!(TimeoutSeconds::new(86_401).is_err());
        assert_eq!(TimeoutSeconds::new(86_400).map(u32::from), Ok(86_400));
    }

    fn priority() -> impl Strategy<Value = Priority> {
        prop::sample::select(Priority::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn dequeue_order_is_priority_then_age(mut items in prop::collection::vec((priority(), 0i64..1000), 0..50)) {
            items.sort_by(|a, b| dequeue_order(*a, *b));
            for pair in items.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                prop_assert!(a.0 > b.0 || (a.0 == b.0 && a.1 <= b.1));
            }
        }

        #[test]
        fn status_names_round_trip(i in 0usize..7) {
            let s = CommandStatus::ALL[i];
            prop_assert_eq!(s.as_str().parse::<CommandStatus>(), Ok(s));
        }
    }
}
