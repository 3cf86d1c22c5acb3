//! Starting a command: workspace, working directory, clean environment, own process group,
//! and — unless the sandbox is off — the sandbox helper in front of it.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use domain::ports::ExecRequest;
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use crate::group;
use crate::sandbox::{self, Sandbox, SandboxConfig, Spec};

/// PATH given to commands whose environment does not set one (the server's own is never passed).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest a sandbox may take to set up; it takes milliseconds unless something is badly wrong.
const SANDBOX_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest reason read from the helper.
const MAX_REPORT_BYTES: u64 = 4096;

/// Why a command could not start; the text becomes the command's `start_failed` error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The request had no program to run.
    #[error("the command is empty")]
    EmptyCommand,
    /// The working directory is missing or not a directory.
    #[error("working directory {} does not exist or is not a directory", path.display())]
    MissingCwd {
        /// The resolved working directory.
        path: PathBuf,
    },
    /// The program could not be executed (not found, not executable, …).
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// `argv[0]`.
        program: String,
        /// What `exec` said.
        source: io::Error,
    },
    /// The sandbox could not be set up, or the command failed to start inside it; the text
    /// is the helper's own.
    #[error("{0}")]
    Sandboxed(String),
    /// The child was started but reported no usable pid (it is killed on drop).
    #[error("the started process has no usable process id")]
    NoPid,
}

/// A started child with its pipes taken out, so they can be read and written concurrently.
#[derive(Debug)]
pub(crate) struct Spawned {
    /// The child itself, for waiting.
    pub child: Child,
    /// Its process group (equal to its pid: it leads its own group).
    pub group: Pid,
    /// Its stdin, when the request brought bytes for it.
    pub stdin: Option<ChildStdin>,
    /// Its stdout.
    pub stdout: Option<ChildStdout>,
    /// Its stderr.
    pub stderr: Option<ChildStderr>,
    /// Sandboxed: where the helper writes the command's end (two bytes, `sandbox::ended`) as
    /// soon as nothing of it is left, before the namespaces are torn down.
    pub ended: Option<OwnedFd>,
}

/// Unsandboxed: `cwd` taken from the workspace when relative, as is when absolute.
pub(crate) fn resolve_cwd(workspace: &Path, cwd: Option<&str>) -> PathBuf {
    match cwd {
        // `Path::join` with an absolute path yields that path, which is exactly the rule.
        Some(cwd) => workspace.join(cwd),
        None => workspace.to_path_buf(),
    }
}

/// Starts `request` with its workspace at `workspace` (already created).
pub(crate) async fn start(request: &ExecRequest, workspace: &Path, sandbox: &Sandbox) -> Result<Spawned, StartError> {
    if request.argv.is_empty() {
        return Err(StartError::EmptyCommand);
    }
    match sandbox {
        Sandbox::Off => start_unconfined(request, workspace).await,
        Sandbox::On(config) => start_sandboxed(request, workspace, config).await,
    }
}

/// The base of every command: clean environment with `PATH` and `HOME`, own process group,
/// piped output, stdin only when there are bytes for it.
fn base_command(program: impl AsRef<std::ffi::OsStr>, request: &ExecRequest, home: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", home)
        // The request's env comes last so it may override PATH and HOME.
        .envs(request.env.iter())
        .process_group(0)
        .stdin(if request.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A backstop for the direct child if the run is dropped before the group guard exists.
        .kill_on_drop(true);
    command
}

async fn start_unconfined(request: &ExecRequest, workspace: &Path) -> Result<Spawned, StartError> {
    let program = &request.argv[0];
    let cwd = resolve_cwd(workspace, request.cwd.as_deref());
    // Checked up front because a failed chdir and a missing program both surface as ENOENT from
    // spawn, and the client deserves to know which one it was.
    let is_dir = tokio::fs::metadata(&cwd).await.map(|m| m.is_dir()).unwrap_or(false);
    if !is_dir {
        return Err(StartError::MissingCwd { path: cwd });
    }
    let mut command = base_command(program, request, workspace);
    command.args(&request.argv[1..]).current_dir(&cwd);
    let child = command.spawn().map_err(|source| StartError::Spawn { program: program.clone(), source })?;
    spawned(child, &cwd)
}

/// Where the command runs inside the sandbox: absolute `cwd`s as they are, relative ones from
/// the workdir. `..` is resolved by the kernel inside the sandbox, where it cannot leave it.
pub(crate) fn sandbox_cwd(workdir: &Path, cwd: Option<&str>) -> PathBuf {
    resolve_cwd(workdir, cwd)
}

async fn start_sandboxed(
    request: &ExecRequest,
    workspace: &Path,
    config: &SandboxConfig,
) -> Result<Spawned, StartError> {
    let workdir = PathBuf::from(&request.workdir);
    // The write end is inherited by plain descriptor inheritance (no pre_exec hook, so the
    // helper can be started with posix_spawn rather than a fork of the whole server). A helper
    // of another command spawned at the same moment may inherit it too; it closes every
    // descriptor but its own at once, so this one still sees EOF on time.
    let (report, report_write) = inherited_pipe()?;
    let (ended, ended_write) = inherited_pipe()?;
    let spec = Spec {
        workspace: workspace.to_path_buf(),
        cwd: sandbox_cwd(&workdir, request.cwd.as_deref()),
        workdir: workdir.clone(),
        uid: config.uid,
        gid: config.gid,
        network: config.network,
        hostname: format!("local-{}", request.project),
        hidden: config.hidden.clone(),
        report_fd: report_write.as_raw_fd(),
        ended_fd: ended_write.as_raw_fd(),
        server_pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
        argv: request.argv.iter().map(OsString::from).collect(),
    };
    let mut command = base_command(&config.helper, request, &workdir);
    command.arg(sandbox::HELPER_MODE_ARG).args(spec.to_args());
    let spawn = command.spawn();
    drop((report_write, ended_write));
    let mut child = spawn.map_err(|e| StartError::Sandboxed(format!("sandbox: cannot start the helper: {e}")))?;
    match read_report(report).await {
        Ok(reason) if reason.is_empty() => spawned(child, &spec.cwd).map(|s| Spawned { ended: Some(ended), ..s }),
        outcome => {
            let reason = match outcome {
                Ok(reason) => reason,
                Err(e) => format!("sandbox: {e}"),
            };
            if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                group::signal_group(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Err(StartError::Sandboxed(reason))
        }
    }
}

/// A pipe whose write end the helper inherits (the read end stays close-on-exec).
fn inherited_pipe() -> Result<(OwnedFd, OwnedFd), StartError> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| StartError::Sandboxed(format!("sandbox: cannot create a pipe: {e}")))?;
    nix::fcntl::fcntl(write.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
        .map_err(|e| StartError::Sandboxed(format!("sandbox: cannot pass a pipe to the helper: {e}")))?;
    Ok((read, write))
}

/// Reads the helper's report to its end: nothing when the command was executed (the pipe
/// closes on `exec`), the reason otherwise.
async fn read_report(report: OwnedFd) -> io::Result<String> {
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(report)?;
    let mut text = Vec::new();
    let mut limited = pipe.take(MAX_REPORT_BYTES);
    let read = limited.read_to_end(&mut text);
    match tokio::time::timeout(SANDBOX_SETUP_TIMEOUT, read).await {
        Ok(result) => result.map(|_| String::from_utf8_lossy(&text).trim().to_owned()),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("set-up took over {SANDBOX_SETUP_TIMEOUT:?}"))),
    }
}

fn spawned(mut child: Child, cwd: &Path) -> Result<Spawned, StartError> {
    let pid = child.id().and_then(|id| i32::try_from(id).ok()).ok_or(StartError::NoPid)?;
    tracing::debug!(pid, cwd = %cwd.display(), "child process spawned");
    Ok(Spawned {
        group: Pid::from_raw(pid),
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
        ended: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cwd_is_the_workspace() {
        assert_eq!(resolve_cwd(Path::new("/ws/p"), None), PathBuf::from("/ws/p"));
    }

    #[test]
    fn relative_cwd_is_taken_from_the_workspace() {
        assert_eq!(resolve_cwd(Path::new("/ws/p"), Some("src/app")), PathBuf::from("/ws/p/src/app"));
    }

    #[test]
    fn absolute_cwd_is_used_as_is() {
        assert_eq!(resolve_cwd(Path::new("/ws/p"), Some("/tmp")), PathBuf::from("/tmp"));
    }

    #[test]
    fn sandbox_cwd_dot_dot_stays_a_sandbox_path() {
        assert_eq!(sandbox_cwd(Path::new("/workspace"), Some("../other")), PathBuf::from("/workspace/../other"));
    }
}
