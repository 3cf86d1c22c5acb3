//! Driving one started command to its end: stdin, both output streams and the clock at once.

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use domain::command::Termination;
use domain::output::{CapturedOutput, HeadTailBuffer, OutputStream};
use domain::ports::{ExecRequest, ExecResult, OutputSink};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio_util::sync::CancellationToken;

use crate::group::{self, GroupGuard};
use crate::sandbox::{self, Sandbox};
use crate::spawn::{self, Spawned};

/// How long output pipes may stay open after the command ended (exited or was killed). A
/// grandchild that escaped the group, or a daemon left behind on purpose, can hold them forever;
/// past this we stop reading, and it gets SIGPIPE on its next write.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes read from a pipe at once, so output reaches the sink in modest chunks.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// How one run is set up: where its workspace is, how it is confined, how kills are paced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunSetup<'a> {
    /// The project's workspace on the host (already created).
    pub workspace: &'a Path,
    /// The sandbox, or none.
    pub sandbox: &'a Sandbox,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

/// Runs `request` to the end; never panics, never hangs past kill and drain.
pub(crate) async fn execute(
    request: ExecRequest,
    setup: RunSetup<'_>,
    sink: &dyn OutputSink,
    cancel: CancellationToken,
) -> ExecResult {
    let kill_grace = setup.kill_grace;
    let spawned = match spawn::start(&request, setup.workspace, setup.sandbox).await {
        Ok(spawned) => spawned,
        Err(e) => {
            tracing::info!(error = %e, "command could not start");
            return ExecResult {
                termination: Termination::StartFailed(e.to_string()),
                stdout: CapturedOutput::default(),
                stderr: CapturedOutput::default(),
            };
        }
    };
    let Spawned { mut child, group, stdin, stdout, stderr, ended: end_pipe } = spawned;
    sink.started().await;
    let mut guard = GroupGuard::new(group);
    // Fires once the child has ended (and, after a kill, its group has been killed).
    let ended = CancellationToken::new();
    let (cap, timeout, stdin_bytes) = (request.max_output_bytes, request.timeout, request.stdin);
    let supervise = async {
        let outcome = supervise(&mut child, group, end_pipe, timeout, kill_grace, &cancel).await;
        ended.cancel();
        outcome
    };
    let ((termination, reaped), (), out, err) = tokio::join!(
        supervise,
        feed_stdin(stdin, stdin_bytes, &ended),
        pump(stdout, OutputStream::Stdout, sink, cap, &ended),
        pump(stderr, OutputStream::Stderr, sink, cap, &ended),
    );
    guard.disarm();
    if !reaped {
        // The sandbox reported the end first: its helper is still waiting for the namespaces
        // to be torn down. Reaped here, off the command's path.
        tokio::spawn(async move {
            if let Err(e) = child.wait().await {
                tracing::warn!(error = %e, "cannot reap the sandbox helper");
            }
        });
    }
    tracing::debug!(?termination, "command ended");
    ExecResult { termination, stdout: out.finish(), stderr: err.finish() }
}

/// Waits for the child (or, sandboxed, the end its helper reports first), its timeout or a
/// cancel, whichever comes first, and kills the group in the last two cases (and when waiting
/// itself fails, so nothing runs unwatched). `true` with the termination when the child was
/// reaped.
async fn supervise(
    child: &mut Child,
    group: Pid,
    end_pipe: Option<OwnedFd>,
    timeout: Duration,
    kill_grace: Duration,
    cancel: &CancellationToken,
) -> (Termination, bool) {
    let outcome = tokio::select! {
        // Biased so a command that ended just as the clock ran out keeps its real status.
        biased;
        status = child.wait() => match status {
            Ok(status) => return (termination_of(status), true),
            Err(e) => {
                tracing::error!(error = %e, "cannot wait for the command");
                Termination::Unknown(format!("lost track of the process: {e}"))
            }
        },
        termination = reported_end(end_pipe) => return (termination, false),
        () = cancel.cancelled() => Termination::Cancelled,
        () = tokio::time::sleep(timeout) => Termination::TimedOut,
    };
    tracing::info!(?outcome, "killing the command's process group");
    group::terminate(child, group, kill_grace).await;
    (outcome, true)
}

/// The end a sandbox helper reports on `pipe` once every process of the command is gone;
/// never ready without a pipe or when the helper closes it without one (then the helper's own
/// exit says how the command ended).
async fn reported_end(pipe: Option<OwnedFd>) -> Termination {
    let mut end = [0u8; 2];
    let read = match pipe.map(tokio::net::unix::pipe::Receiver::from_owned_fd) {
        Some(Ok(mut pipe)) => pipe.read_exact(&mut end).await.is_ok(),
        _ => false,
    };
    match read.then(|| sandbox::decode_end(end)).flatten() {
        Some(sandbox::End::Exited(code)) => Termination::Exited(code),
        Some(sandbox::End::Signaled(signal)) => Termination::Signaled(signal),
        None => std::future::pending().await,
    }
}

/// How a child that ended on its own ended.
fn termination_of(status: ExitStatus) -> Termination {
    match (status.code(), status.signal()) {
        (Some(code), _) => Termination::Exited(code),
        (None, Some(signal)) => Termination::Signaled(signal),
        (None, None) => Termination::Unknown(format!("unrecognised wait status {status:?}")),
    }
}

/// Writes the request's stdin bytes, then closes the pipe (dropping it) so the child sees EOF.
/// Gives up when the command ends: a child that never reads must not keep us writing.
async fn feed_stdin(pipe: Option<ChildStdin>, bytes: Option<Vec<u8>>, ended: &CancellationToken) {
    let (Some(mut pipe), Some(bytes)) = (pipe, bytes) else { return };
    let write = async {
        pipe.write_all(&bytes).await?;
        pipe.shutdown().await
    };
    tokio::select! {
        written = write => match written {
            Ok(()) => {}
            // The child exited or closed stdin without reading everything: its choice.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => tracing::warn!(error = %e, "cannot write the command's stdin"),
        },
        () = ended.cancelled() => {}
    }
}

/// Reads one output stream to its end, sending every chunk to the sink and the capture; stops
/// reading `OUTPUT_DRAIN_TIMEOUT` after the command ended even if the pipe is still open.
async fn pump<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    stream: OutputStream,
    sink: &dyn OutputSink,
    cap: usize,
    ended: &CancellationToken,
) -> HeadTailBuffer {
    let mut capture = HeadTailBuffer::new(cap);
    let Some(mut pipe) = pipe else { return capture };
    // One deadline for the whole drain: a writer that never pauses must not push it back.
    let drain_deadline = async {
        ended.cancelled().await;
        tokio::time::sleep(OUTPUT_DRAIN_TIMEOUT).await;
    };
    tokio::pin!(drain_deadline);
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = &buf[..n];
                    sink.emit(stream, chunk).await;
                    capture.push(chunk);
                }
                Err(e) => {
                    tracing::warn!(stream = stream.as_str(), error = %e, "cannot read command output");
                    break;
                }
            },
            () = &mut drain_deadline => {
                tracing::debug!(stream = stream.as_str(), "output still open after the command ended; not waiting");
                break;
            }
        }
    }
    capture
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_to_exited() {
        assert_eq!(termination_of(ExitStatus::from_raw(0)), Termination::Exited(0));
        assert_eq!(termination_of(ExitStatus::from_raw(3 << 8)), Termination::Exited(3));
    }

    #[test]
    fn signal_deaths_map_to_signaled() {
        assert_eq!(termination_of(ExitStatus::from_raw(9)), Termination::Signaled(9));
    }
}
