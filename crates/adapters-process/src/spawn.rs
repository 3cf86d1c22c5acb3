//! Starting a command: workspace, working directory, clean environment, own process group.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use domain::ports::ExecRequest;
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// PATH given to commands whose environment does not set one (the server's own is never passed).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a command could not start; the text becomes the command's `start_failed` error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The request had no program to run.
    #[error("the command is empty")]
    EmptyCommand,
    /// The project's workspace could not be created.
    #[error("cannot create the workspace {}: {source}", path.display())]
    Workspace {
        /// The workspace directory.
        path: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
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
}

/// Where the command runs: `cwd` taken from the workspace when relative, as is when absolute.
pub(crate) fn resolve_cwd(workspace: &Path, cwd: Option<&str>) -> PathBuf {
    match cwd {
        // `Path::join` with an absolute path yields that path, which is exactly the rule.
        Some(cwd) => workspace.join(cwd),
        None => workspace.to_path_buf(),
    }
}

/// Creates the workspace, checks the working directory and starts the child.
pub(crate) async fn start(request: &ExecRequest, workspace: &Path) -> Result<Spawned, StartError> {
    let (program, args) = request.argv.split_first().ok_or(StartError::EmptyCommand)?;
    tokio::fs::create_dir_all(workspace)
        .await
        .map_err(|source| StartError::Workspace { path: workspace.to_path_buf(), source })?;
    let cwd = resolve_cwd(workspace, request.cwd.as_deref());
    // Checked up front because a failed chdir and a missing program both surface as ENOENT from
    // spawn, and the client deserves to know which one it was.
    let is_dir = tokio::fs::metadata(&cwd).await.map(|m| m.is_dir()).unwrap_or(false);
    if !is_dir {
        return Err(StartError::MissingCwd { path: cwd });
    }

    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(&cwd)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", workspace)
        // The request's env comes last so it may override PATH and HOME.
        .envs(request.env.iter())
        .process_group(0)
        .stdin(if request.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A backstop for the direct child if the run is dropped before the group guard exists.
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| StartError::Spawn { program: program.clone(), source })?;
    let pid = child.id().and_then(|id| i32::try_from(id).ok()).ok_or(StartError::NoPid)?;
    tracing::debug!(pid, cwd = %cwd.display(), "command started");
    Ok(Spawned {
        group: Pid::from_raw(pid),
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
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
}
