//! The `kube-sim` binary as a child process, and its fault switch (`/_sim/faults`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::process::Proc;

/// A running kube-sim.
#[derive(Debug)]
pub struct Sim {
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// A kubeconfig pointing at it.
    pub kubeconfig: PathBuf,
    _proc: Proc,
}

impl Sim {
    /// Starts kube-sim on a free port with pods under `dir`, its kubeconfig's namespace `namespace`.
    ///
    /// # Panics
    /// When it does not start or never says where it listens.
    pub async fn start(dir: &Path, namespace: &str) -> Sim {
        let bin = crate::bins::binary("kube-sim");
        let kubeconfig = dir.join("kubeconfig");
        let log = dir.join("kube-sim.log");
        let pods = dir.join("pods");
        let (kc, pods_s) = (kubeconfig.display().to_string(), pods.display().to_string());
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--kubeconfig-out",
            &kc,
            "--namespace",
            namespace,
            "--ready-delay-ms",
            "100",
            "--pods-root",
            &pods_s,
        ];
        let env = [("RUST_LOG".to_owned(), "kube_sim=warn".to_owned())];
        let mut proc = Proc::spawn("kube-sim", &bin, &args, &env, &log);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let listening = text.lines().find_map(|l| l.strip_prefix("kube-sim listening on ")).map(str::trim);
            if let (Some(base), true) = (listening, text.contains("kubeconfig written to")) {
                return Sim { base: base.trim_end_matches('/').to_owned(), kubeconfig, _proc: proc };
            }
            if let Some(status) = proc.try_exit() {
                panic!("kube-sim exited ({status}):\n{text}");
            }
            assert!(tokio::time::Instant::now() < deadline, "kube-sim did not start:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces the injected faults (`POST /_sim/faults`), e.g. `{"refuse_connections":true}`.
    ///
    /// # Panics
    /// Unless the simulator accepts them.
    pub async fn set_faults(&self, client: &reqwest::Client, faults: &Value) {
        let res =
            client.post(format!("{}/_sim/faults", self.base)).json(faults).send().await.expect("POST /_sim/faults");
        assert!(res.status().is_success(), "set faults: {}", res.status());
    }

    /// Clears every fault (`DELETE /_sim/faults`).
    ///
    /// # Panics
    /// Unless the simulator accepts it.
    pub async fn clear_faults(&self, client: &reqwest::Client) {
        let res = client.delete(format!("{}/_sim/faults", self.base)).send().await.expect("DELETE /_sim/faults");
        assert!(res.status().is_success(), "clear faults: {}", res.status());
    }
}
