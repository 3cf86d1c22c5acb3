//! A child process that cannot outlive its handle: output to a log file, killed on drop.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `setpriv`, when present: children get SIGKILL when the test process dies, however it dies.
const SETPRIV: &str = "/usr/bin/setpriv";

/// A running child.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args` and exactly the environment `env` (plus `PATH`), stdout and
    /// stderr appended to `log`.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn spawn(name: &str, program: &Path, args: &[&str], env: &[(String, String)], log: &Path) -> Proc {
        let mut cmd = if Path::new(SETPRIV).is_file() {
            let mut c = Command::new(SETPRIV);
            // The signal goes with the exec; the same pid is the program's.
            c.args(["--pdeathsig", "KILL", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let out = OpenOptions::new().create(true).append(true).open(log).expect("open the child's log");
        let err = out.try_clone().expect("clone the log handle");
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.display()));
        Proc { name: name.to_owned(), child: Some(child), log: log.to_path_buf() }
    }

    /// Its pid, while it has not been reaped.
    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()).map(Pid::from_raw)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGTERM…).
    ///
    /// # Panics
    /// When the process is gone.
    pub fn signal(&self, signal: Signal) {
        let pid = self.pid().unwrap_or_else(|| panic!("{} is not running", self.name));
        kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to {}: {e}", self.name));
    }

    /// SIGKILL, then reaps it: when this returns, the process is gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already exited is fine: the point is that it is gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `within` for it to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `lines` lines of its log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        self.kill9();
    }
}
