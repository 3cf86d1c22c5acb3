//! One exec session after the upgrade: the channel framing, the local process standing in for
//! the container process, and the single status on channel 3 followed by a Close 1000.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::pod;
use crate::processes::{ExecProcess, CONTAINER_MARKER_ENV, POD_MARKER_ENV};
use crate::state::Sim;

/// PATH of exec processes unless the container's `env` sets one.
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long output is still read after the process exits (a background child may hold the pipes).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(250);
/// How long the server waits for the client's Close after its own.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const CLOSE_SIGNAL: u8 = 255;

/// The negotiated channel subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `v4.channel.k8s.io`: binary channels, no CLOSE signal.
    V4,
    /// `v5.channel.k8s.io`: v4 plus the `[255, channel]` CLOSE signal.
    V5,
}

impl Protocol {
    /// The `Sec-WebSocket-Protocol` name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::V4 => "v4.channel.k8s.io",
            Protocol::V5 => "v5.channel.k8s.io",
        }
    }
}

/// Everything an accepted exec request asked for.
#[derive(Debug)]
pub(crate) struct ExecSession {
    pub sim: Arc<Sim>,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub protocol: Protocol,
}

/// How the command ended, as the status channel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Internal(String),
}

fn frame(channel: u8, payload: &[u8]) -> Message {
    let mut data = Vec::with_capacity(payload.len() + 1);
    data.push(channel);
    data.extend_from_slice(payload);
    Message::Binary(Bytes::from(data))
}

/// The channel-3 document (a bare `metav1.Status`, no kind or apiVersion).
fn status_document(outcome: &Outcome, protocol: Protocol, command: &[String]) -> Value {
    match outcome {
        Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => {
            let inner = match protocol {
                // What the apiserver's v5 stream translator writes.
                Protocol::V5 => format!("command terminated with exit code {code}"),
                // What the kubelet writes on the direct (v4) path, with containerd's wording.
                Protocol::V4 => format!("error executing command [{}], exit code {code}", command.join(" ")),
            };
            json!({"metadata": {}, "status": "Failure",
                   "message": format!("command terminated with non-zero exit code: {inner}"),
                   "reason": "NonZeroExitCode",
                   "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
        }
        Outcome::Internal(inner) => json!({"metadata": {}, "status": "Failure",
            "message": format!("Internal error occurred: {inner}"), "reason": "InternalError",
            "details": {"causes": [{"message": inner}]}, "code": 500}),
    }
}

/// The exit code as a shell reports it: the code, or 128 + the signal that killed the process.
fn exit_code(status: ExitStatus) -> i32 {
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(255)
}

/// containerd's words for a process that could not be started.
fn start_failure(program: &str, error: &std::io::Error) -> String {
    let why = match error.kind() {
        std::io::ErrorKind::NotFound if program.contains('/') => format!("stat {program}: no such file or directory"),
        std::io::ErrorKind::NotFound => "executable file not found in $PATH".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => error.to_string(),
    };
    let exec_id = hex::encode(rand::random::<[u8; 32]>());
    format!(
        "error executing command in container: failed to exec in container: failed to start exec {exec_id:?}: \
         OCI runtime exec failed: exec failed: unable to start container process: exec: {program:?}: {why}: unknown"
    )
}

async fn read_some<R: AsyncRead + Unpin>(pipe: Option<&mut R>, buf: &mut [u8]) -> std::io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Feeds stdin from the client's channel-0 frames; dropping the sender closes the pipe (EOF).
fn stdin_writer(mut pipe: ChildStdin) -> mpsc::UnboundedSender<Bytes> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if pipe.write_all(&chunk).await.is_err() {
                // The process closed its stdin; further input has nowhere to go.
                break;
            }
        }
        let _ = pipe.shutdown().await;
    });
    tx
}

impl ExecSession {
    fn environment(&self) -> Vec<(String, String)> {
        let dir = self.sim.pod_dir(&self.namespace, &self.pod).to_string_lossy().into_owned();
        let mut env = vec![
            ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
            ("HOME".to_owned(), dir),
            ("HOSTNAME".to_owned(), self.pod.clone()),
        ];
        let spec_env = self
            .sim
            .pod(&self.namespace, &self.pod)
            .and_then(|p| pod::container_spec(&p, &self.container))
            .and_then(|c| c.get("env").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        for var in spec_env {
            if let (Some(name), Some(value)) =
                (var.get("name").and_then(Value::as_str), var.get("value").and_then(Value::as_str))
            {
                env.retain(|(n, _)| n != name);
                env.push((name.to_owned(), value.to_owned()));
            }
        }
        env.push((POD_MARKER_ENV.to_owned(), self.uid.clone()));
        env.push((CONTAINER_MARKER_ENV.to_owned(), self.container.clone()));
        env
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let piped = |wanted: bool| if wanted { Stdio::piped() } else { Stdio::null() };
        let (program, args) =
            self.command.split_first().ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        Command::new(program)
            .args(args)
            .current_dir(self.sim.pod_dir(&self.namespace, &self.pod))
            .env_clear()
            .envs(self.environment())
            .process_group(0)
            .stdin(piped(self.stdin))
            .stdout(piped(self.stdout))
            .stderr(piped(self.stderr))
            .kill_on_drop(false)
            .spawn()
    }

    fn container_running(&self) -> bool {
        self.sim.pod(&self.namespace, &self.pod).is_some_and(|p| {
            pod::meta_str(&p, "uid") == Some(self.uid.as_str()) && pod::container_running(&p, &self.container)
        })
    }

    /// Runs the session on an upgraded connection until the command ends (or the sim stops).
    pub(crate) async fn run<S: AsyncRead + AsyncWrite + Unpin>(self, mut socket: WebSocketStream<S>) {
        let first = if self.stdout {
            STDOUT
        } else if self.stderr {
            STDERR
        } else {
            STATUS
        };
        // The connection is announced with an empty message on the lowest writable channel.
        if socket.send(frame(first, &[])).await.is_err() {
            return;
        }
        let outcome = if self.container_running() {
            match self.spawn() {
                Ok(child) => self.supervise(child, &mut socket).await,
                Err(e) => Some(Outcome::Internal(start_failure(self.command.first().map_or("", String::as_str), &e))),
            }
        } else {
            Some(Outcome::Internal(format!("unable to upgrade connection: container not found ({:?})", self.container)))
        };
        let Some(outcome) = outcome else {
            return;
        };
        if self.sim.faults.get().omit_exec_status != Some(true) {
            let status = status_document(&outcome, self.protocol, &self.command);
            if socket.send(frame(STATUS, status.to_string().as_bytes())).await.is_err() {
                return;
            }
        }
        let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        if socket.send(Message::Close(Some(close))).await.is_err() {
            return;
        }
        // Wait for the client's Close so that nothing it still reads is cut off.
        let _ = tokio::time::timeout(CLOSE_WAIT, async { while let Some(Ok(_)) = socket.next().await {} }).await;
    }

    /// Pumps the channels until the process has exited and its output is drained. `None` when
    /// the client is gone (nothing is reported then) or the simulator stops.
    async fn supervise<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut child: Child,
        socket: &mut WebSocketStream<S>,
    ) -> Option<Outcome> {
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        self.sim
            .processes
            .register(&self.uid, ExecProcess { pid, container: self.container.clone(), command: self.command.clone() });
        if !self.container_running() {
            // The pod died while the process started; it must not outlive it.
            self.sim.processes.kill_pod(&self.uid, Some(&self.container));
        }
        let mut stdin = child.stdin.take().map(stdin_writer);
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let (mut out_buf, mut err_buf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
        let mut connected = true;
        let mut exited: Option<ExitStatus> = None;
        let mut drain_until = Instant::now();
        loop {
            if exited.is_some() && stdout.is_none() && stderr.is_none() {
                break;
            }
            tokio::select! {
                message = socket.next(), if connected => match message {
                    Some(Ok(Message::Binary(data))) => {
                        if !self.client_frame(&data, &mut stdin) {
                            connected = false;
                            stdin = None;
                        }
                    }
                    // Text, ping and pong frames carry nothing for the process.
                    Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    // Like a kubelet: a departed client only closes stdin; the process runs on.
                    Some(Ok(Message::Close(_)) | Err(_)) | None => {
                        connected = false;
                        stdin = None;
                    }
                },
                read = read_some(stdout.as_mut(), &mut out_buf) => match read {
                    Ok(n) if n > 0 => {
                        connected = connected && socket.send(frame(STDOUT, &out_buf[..n])).await.is_ok();
                    }
                    _ => stdout = None,
                },
                read = read_some(stderr.as_mut(), &mut err_buf) => match read {
                    Ok(n) if n > 0 => {
                        connected = connected && socket.send(frame(STDERR, &err_buf[..n])).await.is_ok();
                    }
                    _ => stderr = None,
                },
                status = child.wait(), if exited.is_none() => {
                    exited = Some(status.unwrap_or_else(|_| ExitStatus::from_raw(255 << 8)));
                    drain_until = Instant::now() + DRAIN_AFTER_EXIT;
                },
                () = tokio::time::sleep_until(drain_until), if exited.is_some() => break,
                () = self.sim.shutdown.cancelled() => {
                    self.sim.processes.unregister(&self.uid, pid);
                    return None;
                },
            }
        }
        self.sim.processes.unregister(&self.uid, pid);
        drop(stdin);
        let status = exited?;
        connected.then(|| Outcome::Exited(exit_code(status)))
    }

    /// Handles one binary frame from the client; `false` ends the connection.
    fn client_frame(&self, data: &[u8], stdin: &mut Option<mpsc::UnboundedSender<Bytes>>) -> bool {
        let Some((&channel, payload)) = data.split_first() else {
            return true;
        };
        match channel {
            STDIN => {
                if let Some(tx) = stdin.as_ref() {
                    if !payload.is_empty() && tx.send(Bytes::copy_from_slice(payload)).is_err() {
                        *stdin = None;
                    }
                }
                true
            }
            CLOSE_SIGNAL if self.protocol == Protocol::V5 => {
                // A malformed CLOSE ends the connection, as on the real server.
                if payload.len() != 1 || payload[0] >= 5 {
                    return false;
                }
                if payload[0] == STDIN {
                    *stdin = None;
                }
                true
            }
            // Resize (4) is meaningless without a terminal; unknown channels are ignored.
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_documents_match_the_apiserver() {
        let command = vec!["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];
        assert_eq!(
            status_document(&Outcome::Exited(0), Protocol::V5, &command),
            json!({"metadata": {}, "status": "Success"})
        );
        let v5 = status_document(&Outcome::Exited(3), Protocol::V5, &command);
        assert_eq!(v5["message"], "command terminated with non-zero exit code: command terminated with exit code 3");
        assert_eq!(v5["details"], json!({"causes": [{"reason": "ExitCode", "message": "3"}]}));
        assert!(v5.get("code").is_none());
        let v4 = status_document(&Outcome::Exited(3), Protocol::V4, &command);
        assert_eq!(
            v4["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        let internal = status_document(&Outcome::Internal("boom".into()), Protocol::V5, &command);
        assert_eq!(internal["code"], 500);
        assert_eq!(internal["reason"], "InternalError");
    }

    #[test]
    fn signals_become_128_plus_the_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
    }

    #[test]
    fn start_failures_use_containerd_words() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(
            start_failure("nosuch", &missing).contains("exec: \"nosuch\": executable file not found in $PATH: unknown")
        );
        assert!(start_failure("/bin/nosuch", &missing).contains("stat /bin/nosuch: no such file or directory"));
    }
}
