//! Fakes of the outside-world ports (`Executor`, `PodManager`, `WebhookSender`) for tests of
//! the services that drive them, such as the queue worker: scripted, instant, and recording.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::command::Termination;
use crate::ids::CommandId;
use crate::output::{CapturedOutput, OutputStream};
use crate::pod::{PodPhase, PodSpec, PodStatus};
use crate::ports::{ExecRequest, ExecResult, Executor, OutputSink, PodManager};
use crate::project::ProjectName;
use crate::webhook::{SendOutcome, WebhookRequest, WebhookSender, WebhookUrl};
use crate::{DomainError, DomainResult};

/// An executor that follows the command's own words instead of running it:
/// `sleep-ms N` sleeps N milliseconds then exits 0, `exit N` exits N at once, anything else
/// exits 0 at once. Cancel and the timeout end a sleep as a real executor would. While set
/// unreachable it starts nothing and reports `Unreachable`. Every start is recorded.
#[derive(Debug, Default)]
pub struct FakeExecutor {
    unreachable: AtomicBool,
    started: Mutex<Vec<CommandId>>,
    ended: Mutex<Vec<(CommandId, Termination)>>,
}

impl FakeExecutor {
    /// A reachable executor that has run nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the backend unreachable (true) or reachable again.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::SeqCst);
    }

    /// The commands started so far, in start order (a command listed twice ran twice).
    pub fn started(&self) -> Vec<CommandId> {
        self.started.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The runs that ended so far, with how they ended, in end order.
    pub fn ended(&self) -> Vec<(CommandId, Termination)> {
        self.ended.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn result(termination: Termination, stdout: &str) -> ExecResult {
    let stdout = CapturedOutput { data: stdout.as_bytes().to_vec(), truncated: false };
    ExecResult { termination, stdout, stderr: CapturedOutput::default() }
}

#[async_trait]
impl Executor for FakeExecutor {
    async fn run(&self, request: ExecRequest, sink: &dyn OutputSink, cancel: CancellationToken) -> ExecResult {
        if self.unreachable.load(Ordering::SeqCst) {
            return result(Termination::Unreachable("the fake backend is unreachable".into()), "");
        }
        self.started.lock().unwrap_or_else(PoisonError::into_inner).push(request.command_id);
        let id = request.command_id;
        let result = self.act(request, sink, cancel).await;
        self.ended.lock().unwrap_or_else(PoisonError::into_inner).push((id, result.termination.clone()));
        result
    }

    async fn check(&self) -> DomainResult<()> {
        Ok(())
    }
}

impl FakeExecutor {
    async fn act(&self, request: ExecRequest, sink: &dyn OutputSink, cancel: CancellationToken) -> ExecResult {
        sink.started().await;
        sink.emit(OutputStream::Stdout, b"started\n").await;
        let word = |i: usize| request.argv.get(i).map(String::as_str);
        let number = word(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        match word(0) {
            Some("sleep-ms") => {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(number)) => result(Termination::Exited(0), "started\n"),
                    () = cancel.cancelled() => result(Termination::Cancelled, "started\n"),
                    () = tokio::time::sleep(request.timeout) => result(Termination::TimedOut, "started\n"),
                }
            }
            Some("exit") => result(Termination::Exited(i32::try_from(number).unwrap_or(1)), "started\n"),
            _ => result(Termination::Exited(0), "started\n"),
        }
    }
}

/// Pods that are ready the moment they are started: a project has none until `start` (the
/// worker starts one before its first command), and none again after `stop`. While set
/// unreachable every call answers `Unavailable`, as a backend that cannot be reached does; while
/// set circuit-open, `CircuitOpen`, as a backend behind an open breaker does. A ready delay
/// makes `wait_ready` take that long (tokio time), so a test can act while a command is claimed
/// but not yet started. Clones share their state. Runs the same `PodManager` contract as the
/// real adapters.
#[derive(Debug, Default, Clone)]
pub struct FakePods {
    unreachable: std::sync::Arc<AtomicBool>,
    circuit_open: std::sync::Arc<AtomicBool>,
    ready_after: std::sync::Arc<Mutex<Duration>>,
    running: std::sync::Arc<Mutex<std::collections::BTreeMap<ProjectName, crate::Timestamp>>>,
}

impl FakePods {
    /// Reachable, with no pod.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the backend unreachable (true) or reachable again.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::SeqCst);
    }

    /// Makes every call answer `CircuitOpen` (true), as pods behind an open breaker do, or
    /// answer normally again.
    pub fn set_circuit_open(&self, open: bool) {
        self.circuit_open.store(open, Ordering::SeqCst);
    }

    /// Makes `wait_ready` take `delay` (tokio time) before it answers.
    pub fn set_ready_after(&self, delay: Duration) {
        *self.ready_after.lock().unwrap_or_else(PoisonError::into_inner) = delay;
    }

    fn reach(&self) -> DomainResult<()> {
        if self.unreachable.load(Ordering::SeqCst) {
            Err(DomainError::Unavailable("the fake pod backend is unreachable".into()))
        } else if self.circuit_open.load(Ordering::SeqCst) {
            Err(DomainError::CircuitOpen { dependency: "fake-pods".into(), retry_after_seconds: 1 })
        } else {
            Ok(())
        }
    }

    fn status_of(&self, project: &ProjectName) -> PodStatus {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        match running.get(project) {
            Some(since) => PodStatus {
                phase: PodPhase::Running,
                ready: true,
                pod_name: Some(format!("fake-{project}")),
                started_at: Some(*since),
                reason: None,
            },
            None => PodStatus::stopped(),
        }
    }
}

#[async_trait]
impl PodManager for FakePods {
    async fn status(&self, project: &ProjectName) -> DomainResult<PodStatus> {
        self.reach().map(|()| self.status_of(project))
    }
    async fn start(&self, spec: &PodSpec) -> DomainResult<PodStatus> {
        self.reach()?;
        let now = crate::to_micros_precision(chrono::Utc::now());
        self.running.lock().unwrap_or_else(PoisonError::into_inner).entry(spec.project.clone()).or_insert(now);
        Ok(self.status_of(&spec.project))
    }
    async fn wait_ready(&self, project: &ProjectName, _timeout: Duration) -> DomainResult<PodStatus> {
        let delay = *self.ready_after.lock().unwrap_or_else(PoisonError::into_inner);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.reach().map(|()| self.status_of(project))
    }
    async fn stop(&self, project: &ProjectName) -> DomainResult<PodStatus> {
        self.reach()?;
        self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(project);
        Ok(PodStatus::stopped())
    }
    async fn logs(&self, project: &ProjectName, _tail: u32) -> DomainResult<Vec<String>> {
        self.reach()?;
        let started = self.running.lock().unwrap_or_else(PoisonError::into_inner).contains_key(project);
        Ok(if started { vec![format!("fake pod of {project} started")] } else { Vec::new() })
    }
}

/// A webhook sender that accepts every target and answers every send with 200, recording it.
#[derive(Debug, Default)]
pub struct FakeSender {
    sent: Mutex<Vec<WebhookRequest>>,
}

impl FakeSender {
    /// A sender that has sent nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// What was sent, in order.
    pub fn sent(&self) -> Vec<WebhookRequest> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait]
impl WebhookSender for FakeSender {
    async fn check_target(&self, _url: &WebhookUrl) -> DomainResult<()> {
        Ok(())
    }

    async fn send(&self, request: &WebhookRequest) -> SendOutcome {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).push(request.clone());
        SendOutcome { status: Some(200), latency: Duration::from_millis(1), ..SendOutcome::default() }
    }
}
