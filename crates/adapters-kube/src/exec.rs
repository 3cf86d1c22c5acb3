//! Running one command in its project's pod: check the pod, open the exec stream, move the
//! bytes, watch the clock and the cancel token, and decide how it ended.

use std::future::Future;
use std::time::Duration;

use domain::command::Termination;
use domain::output::{CapturedOutput, OutputStream};
use domain::ports::{ExecRequest, ExecResult, OutputSink};
use domain::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{AttachParams, AttachedProcess};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{bounded_open, KubeError, OpenFailed};
use crate::exit::{stream_end, StreamEnd};
use crate::manifest::pod_name;
use crate::output::{deliver, feed_stdin, pump, ControlSplitter};
use crate::ready_pods::KnownPod;
use crate::status::{ended, is_going_away, oom_killed_since, pod_status, restart_count, to_chrono, working_dir};
use crate::wrapper::{control_tag, run_argv, Control};
use crate::KubeBackend;

/// How long the command's own stream may take to end after the kill script finished, so output
/// printed before the kill is kept.
const STREAM_END_AFTER_KILL: Duration = Duration::from_secs(2);

/// Exit codes of a process killed by SIGKILL or SIGTERM: worth asking the pod whether it was
/// deleted or OOM-killed underneath the command.
const SIGNAL_EXIT_CODES: [i32; 2] = [137, 143];

/// Exit codes `sh` uses for "cannot execute" and "not found".
const SHELL_START_EXIT_CODES: [i32; 2] = [126, 127];

/// What the pod looked like when the command started, to compare with after it ended.
#[derive(Debug)]
struct PodBefore {
    name: String,
    uid: Option<String>,
    restarts: i32,
    started_at: Timestamp,
    /// `uid` and `restarts` come from the cache, not from a read just before the exec.
    cached: bool,
}

/// How supervision ended.
#[derive(Debug)]
enum Ending {
    /// The stream ended by itself, this way.
    Stream(StreamEnd),
    /// rdev-api killed the command (timeout or cancel); `Err` when the kill could not be done.
    Killed(Termination, Result<(), KubeError>),
}

fn without_output(termination: Termination) -> ExecResult {
    ExecResult { termination, stdout: CapturedOutput::default(), stderr: CapturedOutput::default() }
}

/// Runs `request` to the end; never panics, never hangs past its timeout plus the kill.
pub(crate) async fn execute(
    backend: &KubeBackend,
    request: ExecRequest,
    sink: &dyn OutputSink,
    cancel: CancellationToken,
) -> ExecResult {
    let deadline = Instant::now() + request.timeout;
    if request.argv.is_empty() {
        return without_output(Termination::StartFailed("the command is empty".into()));
    }
    let name = pod_name(&request.project);
    // A pod known ready is not read first; if it turns out not to be, the run starts over with
    // a read (at most once: the refusal dropped it from the cache).
    let mut known = backend.ready.get(&name);
    let (interrupted, pod, mut guard) = loop {
        let cached = known.is_some();
        let (before, enter_workdir) = match known.take() {
            Some(pod) => from_cache(name.clone(), pod, &request),
            None => match ready_pod(backend, &request).await {
                Ok(found) => found,
                // Nothing was sent to the pod yet: an unreachable API leaves the command free to
                // go back to the queue.
                Err(e @ KubeError::ApiUnavailable(_)) => {
                    tracing::info!(error = %e, "command not started: the API is unreachable");
                    return without_output(Termination::Unreachable(e.to_string()));
                }
                Err(e) => {
                    tracing::info!(error = %e, "command not started");
                    return without_output(Termination::StartFailed(e.to_string()));
                }
            },
        };
        if cancel.is_cancelled() {
            return without_output(Termination::Cancelled);
        }
        let config = backend.config();
        let argv = run_argv(&request, &config.state_dir, enter_workdir);
        let params = AttachParams::default()
            .container(&config.container_name)
            .stdin(request.stdin.is_some())
            .stdout(true)
            .stderr(true);
        let mut guard = AbandonGuard::new(backend, &before.name, &request);
        let connect = bounded_open("exec", config.api_timeout, backend.pods.exec(&before.name, argv, &params));
        tokio::select! {
            biased;
            connected = connect => match connected {
                Ok(process) => {
                    sink.started().await;
                    let result = supervise(backend, &before, &request, process, sink, &cancel, deadline).await;
                    guard.disarm();
                    return result;
                }
                // Nothing started (the API answered before the upgrade or could not be reached):
                // the cache may be stale or the API down. Read the pod as an uncached run would,
                // so a pod gone is told by the read and an API that is down ends `Unreachable`.
                Err(OpenFailed { error, nothing_started: true }) if cached => {
                    guard.disarm();
                    backend.ready.forget(&before.name);
                    tracing::debug!(%error, "the exec in the pod known ready started nothing; reading the pod");
                }
                Err(OpenFailed { error: KubeError::NotFound(_), .. }) => {
                    guard.disarm();
                    backend.ready.forget(&before.name);
                    return without_output(Termination::PodGone(format!("pod {} disappeared before the command started", before.name)));
                }
                Err(OpenFailed { error, nothing_started }) => {
                    tracing::warn!(%error, "cannot open the exec stream");
                    backend.ready.forget(&before.name);
                    // A refused upgrade started nothing; a timed-out one may have (see the kill flag).
                    if nothing_started || !matches!(error, KubeError::ApiUnavailable(_)) {
                        guard.disarm();
                    }
                    return without_output(Termination::StartFailed(error.to_string()));
                }
            },
            () = cancel.cancelled() => break (Termination::Cancelled, before.name.clone(), guard),
            () = tokio::time::sleep_until(deadline) => break (Termination::TimedOut, before.name.clone(), guard),
        }
    };
    // The exec may have reached the pod already: the kill raises the flag that stops a late start.
    let killed = backend.kill_in_pod(&pod, &request).await;
    guard.disarm();
    without_output(after_kill(interrupted, killed))
}

/// Kills the command in its pod when dropped while armed: if the run is abandoned (its future
/// dropped at shutdown), the command must not keep running there unsupervised. Best effort: the
/// kill runs on a spawned task, which needs a live runtime.
struct AbandonGuard {
    armed: Option<(KubeBackend, String, ExecRequest)>,
}

impl AbandonGuard {
    fn new(backend: &KubeBackend, pod: &str, request: &ExecRequest) -> Self {
        Self { armed: Some((backend.clone(), pod.to_owned(), request.clone())) }
    }

    /// The run ended its own way (exit or kill); leave the command alone.
    fn disarm(&mut self) {
        self.armed = None;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        let Some((backend, pod, request)) = self.armed.take() else { return };
        tracing::warn!(pod = %pod, command_id = %request.command_id, "run abandoned; killing its command in the pod");
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = backend.kill_in_pod(&pod, &request).await {
                        tracing::error!(pod = %pod, error = %e, "the abandoned command may still run in its pod");
                    }
                });
            }
            Err(_) => tracing::error!(pod = %pod, "no runtime to kill the abandoned command; it may still run"),
        }
    }
}

/// What to compare with later, from the cache instead of a read (see [`ready_pod`]).
fn from_cache(name: String, pod: KnownPod, request: &ExecRequest) -> (PodBefore, bool) {
    let enter_workdir = pod.working_dir.as_deref() != Some(request.workdir.as_str());
    let before = PodBefore { name, uid: pod.uid, restarts: pod.restarts, started_at: chrono::Utc::now(), cached: true };
    (before, enter_workdir)
}

/// Checks that the pod is ready and notes what to compare with later. Also decides whether the
/// wrapper must enter the workdir: an exec starts in the container's `workingDir`, which is the
/// project's workdir unless the project changed since the pod was created.
async fn ready_pod(backend: &KubeBackend, request: &ExecRequest) -> Result<(PodBefore, bool), KubeError> {
    let name = pod_name(&request.project);
    let container = &backend.config().container_name;
    let started_at = chrono::Utc::now();
    let Some(pod) = backend.get_pod(&name).await? else {
        return Err(KubeError::NotReady { pod: name, reason: "there is no pod; start it first".into() });
    };
    let status = pod_status(&pod, container);
    if !status.ready {
        let reason = match status.reason {
            Some(reason) => format!("{} ({reason})", status.phase.as_str()),
            None => status.phase.as_str().to_owned(),
        };
        return Err(KubeError::NotReady { pod: name, reason });
    }
    let enter_workdir = working_dir(&pod, container) != Some(request.workdir.as_str());
    let before = PodBefore {
        name,
        uid: pod.metadata.uid.clone(),
        restarts: restart_count(&pod, container),
        started_at,
        cached: false,
    };
    Ok((before, enter_workdir))
}

/// Drives an open exec stream to its end: stdin, both outputs, and the clock, at once.
async fn supervise(
    backend: &KubeBackend,
    before: &PodBefore,
    request: &ExecRequest,
    mut process: AttachedProcess,
    sink: &dyn OutputSink,
    cancel: &CancellationToken,
    deadline: Instant,
) -> ExecResult {
    let (stdin, stdout, stderr) = (process.stdin(), process.stdout(), process.stderr());
    let status = process.take_status();
    let status = async move {
        match status {
            Some(status) => status.await,
            None => None,
        }
    };
    let ended = CancellationToken::new();
    let mut splitter = ControlSplitter::new(control_tag(request), request);
    let cap = request.max_output_bytes;
    let watch = async {
        let ending = watch_clock(backend, before, request, status, cancel, deadline).await;
        ended.cancel();
        ending
    };
    let (ending, (), out, mut err) = tokio::join!(
        watch,
        feed_stdin(stdin, request.stdin.as_deref(), &ended),
        pump(stdout, OutputStream::Stdout, sink, cap, &ended, None),
        pump(stderr, OutputStream::Stderr, sink, cap, &ended, Some(&mut splitter)),
    );
    // Dropping the process aborts kube-rs's stream task; the command itself has ended or been killed.
    drop(process);
    let (control, held) = splitter.finish();
    deliver(&held, OutputStream::Stderr, sink, &mut err).await;
    let termination = match ending {
        Ending::Killed(outcome, killed) => after_kill(outcome, killed),
        Ending::Stream(end) => after_stream(backend, before, control, end).await,
    };
    tracing::info!(?termination, "command ended");
    ExecResult { termination, stdout: out.finish(), stderr: err.finish() }
}

/// Waits for the stream's status, the deadline or a cancel; on the last two, kills the command
/// in the pod and gives its stream a moment to deliver what it printed before.
async fn watch_clock(
    backend: &KubeBackend,
    before: &PodBefore,
    request: &ExecRequest,
    status: impl Future<Output = Option<Status>>,
    cancel: &CancellationToken,
    deadline: Instant,
) -> Ending {
    tokio::pin!(status);
    let outcome = tokio::select! {
        // Biased so a command that ended just as the clock ran out keeps its real status.
        biased;
        status = &mut status => return Ending::Stream(stream_end(status)),
        () = cancel.cancelled() => Termination::Cancelled,
        () = tokio::time::sleep_until(deadline) => Termination::TimedOut,
    };
    tracing::info!(?outcome, "killing every process of the command in the pod");
    let killed = backend.kill_in_pod(&before.name, request).await;
    if tokio::time::timeout(STREAM_END_AFTER_KILL, &mut status).await.is_err() {
        tracing::debug!("the killed command's stream did not end in time; dropping it");
    }
    Ending::Killed(outcome, killed)
}

/// A command rdev-api killed ends as it was asked to, unless the kill itself failed: then it may
/// still run, and the result must not pretend otherwise.
fn after_kill(outcome: Termination, killed: Result<(), KubeError>) -> Termination {
    match killed {
        Ok(()) => outcome,
        Err(e) => {
            tracing::error!(?outcome, error = %e, "the command may still run in its pod");
            let why = if outcome == Termination::Cancelled { "cancelled" } else { "timed out" };
            Termination::Unknown(format!("{why}, but killing it in the pod failed: {e}"))
        }
    }
}

/// How a command whose stream ended by itself ended. Plain exit codes are taken as they are;
/// signal deaths, runtime failures and a missing status send us to the pod for the reason.
async fn after_stream(
    backend: &KubeBackend,
    before: &PodBefore,
    control: Option<Control>,
    end: StreamEnd,
) -> Termination {
    if let Some(Control::Failed(why)) = control {
        return Termination::StartFailed(why);
    }
    let wrapper_ran = control.is_some();
    match end {
        StreamEnd::Exited(code) if !wrapper_ran && SHELL_START_EXIT_CODES.contains(&code) => {
            return Termination::StartFailed(format!(
                "the command wrapper could not run in the pod (exit {code}); the image needs sh"
            ));
        }
        StreamEnd::Exited(code) if !SIGNAL_EXIT_CODES.contains(&code) => return Termination::Exited(code),
        _ => {}
    }
    let container = &backend.config().container_name;
    let note = match backend.get_pod(&before.name).await {
        Ok(None) => return Termination::PodGone(format!("pod {} was deleted while the command ran", before.name)),
        Ok(Some(pod)) => {
            let (uid, restarts) = ran_in(before, &pod, container);
            if is_going_away(&pod, uid.as_deref()) {
                let how = if pod.metadata.deletion_timestamp.is_some() { "is being deleted" } else { "was replaced" };
                return Termination::PodGone(format!("pod {} {how}", before.name));
            }
            if oom_killed_since(&pod, container, before.started_at, restarts) {
                return Termination::OomKilled;
            }
            // An evicted pod stays (phase Failed) until deleted, but nothing of it runs any more.
            match ended(&pod) {
                Some(why) => {
                    return Termination::PodGone(format!("pod {} ended while the command ran: {why}", before.name))
                }
                None => String::new(),
            }
        }
        Err(e) => format!(" (the pod could not be read: {e})"),
    };
    match end {
        StreamEnd::Exited(code) => Termination::Exited(code),
        StreamEnd::Failure(why) if !wrapper_ran => Termination::StartFailed(format!("{why}{note}")),
        StreamEnd::Failure(why) => Termination::Unknown(format!("{why}{note}")),
        StreamEnd::NoStatus => Termination::Unknown(format!("the exec stream ended without an exit status{note}")),
    }
}

/// The uid and restart count of the pod the command ran in, as far as `pod` (read after the
/// command) tells. From a read before the exec they are exact. From the cache they may be an
/// older pod's: a pod of the same name replaced unseen. Pods of one name never coexist, so a
/// pod created before the exec was sent is the one the exec reached, and its uid is the one to
/// compare with (its restart count now stands for the one then: an OOM kill is still told by
/// its recent `finishedAt`). A pod created after the exec began means the command's own pod
/// went away while it ran: the cached uid stays and the run is `pod_gone`. API timestamps have
/// whole seconds, so "before" allows one second of rounding (and assumes the API server's clock
/// is within that of ours; beyond it, a replacement during the run may read as the command's
/// own end).
fn ran_in(before: &PodBefore, pod: &Pod, container: &str) -> (Option<String>, i32) {
    let created_before_exec = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(to_chrono)
        .is_some_and(|created| created + chrono::TimeDelta::seconds(1) <= before.started_at);
    if before.cached && pod.metadata.uid != before.uid && created_before_exec {
        (pod.metadata.uid.clone(), restart_count(pod, container))
    } else {
        (before.uid.clone(), before.restarts)
    }
}
