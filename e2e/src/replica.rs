//! One `rdev-api serve` process: started, killed, stopped, continued, restarted on its port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;

use crate::process::Proc;

/// How long a replica gets to answer `/readyz` with 200 after it starts.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// A replica: its settings survive restarts; the process does not.
#[derive(Debug)]
pub struct Replica {
    /// `r0`, `r1`, …
    pub name: String,
    /// Its port on 127.0.0.1 (the same across restarts).
    pub port: u16,
    /// Its `WORKSPACES_DIR` (its own, so the ledger tells which replica ran a command).
    pub workspaces: PathBuf,
    env: Vec<(String, String)>,
    bin: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
    /// Starts so far (1 after the first).
    pub starts: u32,
}

impl Replica {
    /// A replica that is not started yet; `env` is its whole environment but `LISTEN_ADDR`
    /// and `WORKSPACES_DIR`, which this sets.
    pub fn new(name: &str, bin: &Path, dir: &Path, port: u16, mut env: Vec<(String, String)>) -> Replica {
        let workspaces = dir.join(format!("ws-{name}"));
        env.push(("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")));
        env.push(("WORKSPACES_DIR".into(), workspaces.display().to_string()));
        Replica {
            name: name.to_owned(),
            port,
            workspaces,
            env,
            bin: bin.to_path_buf(),
            log: dir.join(format!("{name}.log")),
            proc: None,
            starts: 0,
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process (after a kill, on the same port with the same settings).
    pub fn spawn(&mut self) {
        assert!(self.proc.is_none(), "{} is already running", self.name);
        self.proc = Some(Proc::spawn(&self.name, &self.bin, &["serve"], &self.env, &self.log));
        self.starts += 1;
    }

    /// Waits until `/readyz` answers 200.
    ///
    /// # Panics
    /// When the process exits or is not ready in time; the message carries its log's tail.
    pub async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        let url = format!("{}/readyz", self.base());
        loop {
            if let Some(status) = self.proc.as_mut().and_then(Proc::try_exit) {
                panic!("{} exited ({status}) before it was ready:\n{}", self.name, self.log_tail(30));
            }
            if let Ok(res) = client.get(&url).timeout(Duration::from_secs(2)).send().await {
                if res.status() == reqwest::StatusCode::OK {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready within {READY_WITHIN:?}:\n{}",
                self.name,
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`: returns the instant, taken just before the signal; the process is reaped
    /// when this returns.
    pub fn kill9(&mut self) -> DateTime<Utc> {
        let at = Utc::now();
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        at
    }

    /// Sends `signal`; returns the instant, taken just before it.
    pub fn signal(&self, signal: Signal) -> DateTime<Utc> {
        let at = Utc::now();
        self.proc.as_ref().unwrap_or_else(|| panic!("{} is not running", self.name)).signal(signal);
        at
    }

    /// Waits up to `within` for the process to exit (after SIGTERM); its status, if it did.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let proc = self.proc.as_mut()?;
        let status = proc.wait_exit(within).await;
        if status.is_some() {
            self.proc = None;
        }
        status
    }

    /// The last `lines` of its log (all its starts).
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.log, lines)
    }

    /// Its ledger file for `project` (see `crate::ledger`).
    pub fn ledger(&self, project: &str) -> PathBuf {
        self.workspaces.join(project).join(crate::ledger::FILE)
    }
}
