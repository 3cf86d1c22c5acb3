//! A kube-sim per test and a `KubeBackend` pointed at it through a real kubeconfig file.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use adapters_kube::{pod_name, KubeBackend, KubeConfig};
use domain::command::{CommandSpec, EnvMap};
use domain::ids::CommandId;
use domain::pod::{PodSpec, PodStatus};
use domain::ports::{ExecRequest, ExecResult, PodManager};
use domain::project::{ProjectName, Resources};
use domain::testing::executor::{RecordingSink, CONTRACT_WORKDIR};
use domain::testing::project_name;
use kube_sim::{KubeSim, SimConfig};
use tokio_util::sync::CancellationToken;

/// The namespace every test uses.
pub const NAMESPACE: &str = "rdev-test";

/// How long a test pod may take to become ready.
pub const READY: Duration = Duration::from_secs(10);

/// A running simulator and a backend that talks to it.
pub struct Harness {
    pub sim: KubeSim,
    pub backend: KubeBackend,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Harness {
    /// A fresh simulator (pods ready after 50 ms) and a backend built from its kubeconfig file.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut sim_config = SimConfig::for_tests(dir.path().join("pods"));
        sim_config.ready_delay = Duration::from_millis(50);
        let sim = KubeSim::start(sim_config).await.unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig, NAMESPACE).unwrap();
        let config = KubeConfig {
            kill_grace: Duration::from_millis(500),
            api_timeout: Duration::from_secs(3),
            ready_timeout: READY,
            state_dir: dir.path().join("state").display().to_string(),
            ..KubeConfig::new(NAMESPACE)
        };
        let backend = KubeBackend::from_kubeconfig(Some(&kubeconfig), config).await.unwrap();
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
        Self { sim, backend, dir, http }
    }

    /// A second backend on the same simulator with a cache of its own, like another replica.
    pub async fn other_backend(&self) -> KubeBackend {
        let kubeconfig = self.dir.path().join("kubeconfig");
        KubeBackend::from_kubeconfig(Some(&kubeconfig), self.backend.config().clone()).await.unwrap()
    }

    /// Starts `project`'s pod and waits until it is ready.
    pub async fn ready_pod(&self, project: &str) -> PodStatus {
        let spec = spec(project);
        self.backend.start(&spec).await.unwrap();
        let status = self.backend.wait_ready(&spec.project, READY).await.unwrap();
        assert!(status.ready, "pod ready: {status:?}");
        status
    }

    /// The host directory that plays `project`'s container filesystem (the exec cwd).
    pub fn pod_dir(&self, project: &str) -> PathBuf {
        self.sim.pod_dir(NAMESPACE, &pod_name(&project_name(project)))
    }

    /// `POST /_sim/…` on the control endpoint.
    pub async fn control_post(&self, path: &str) -> u16 {
        let url = format!("{}{path}", self.sim.base_url());
        self.http.post(url).send().await.unwrap().status().as_u16()
    }

    /// The exec processes the simulator still runs for `project`'s pod.
    pub async fn processes(&self, project: &str) -> Vec<serde_json::Value> {
        let name = pod_name(&project_name(project));
        let url = format!("{}/_sim/pods/{NAMESPACE}/{name}/processes", self.sim.base_url());
        let body: serde_json::Value = self.http.get(url).send().await.unwrap().json().await.unwrap();
        body["processes"].as_array().cloned().unwrap_or_default()
    }

    /// Runs a request to its end and returns the result with the sink that saw the output.
    pub async fn run(&self, request: ExecRequest) -> (ExecResult, RecordingSink) {
        self.run_with(request, CancellationToken::new()).await
    }

    /// Like `run`, with a cancel token.
    pub async fn run_with(&self, request: ExecRequest, cancel: CancellationToken) -> (ExecResult, RecordingSink) {
        let sink = RecordingSink::new();
        let limit = request.timeout + Duration::from_secs(20);
        let result = tokio::time::timeout(limit, self.backend.run(request, &sink, cancel)).await.expect("run hangs");
        (result, sink)
    }
}

/// The pod spec of a test project (workdir = the contract's, resources set).
pub fn spec(project: &str) -> PodSpec {
    PodSpec {
        project: project_name(project),
        image: "busybox:1.36".into(),
        workdir: CONTRACT_WORKDIR.into(),
        env: EnvMap::parse(BTreeMap::from([("POD_LEVEL".to_owned(), "from-pod".to_owned())])).unwrap(),
        resources: Resources { cpu: Some("250m".into()), memory: Some("128Mi".into()) },
    }
}

/// An argv request in `project`'s pod.
pub fn argv(project: &str, argv: &[&str]) -> ExecRequest {
    ExecRequest {
        command_id: CommandId::generate(),
        project: ProjectName::parse(project).unwrap(),
        workdir: CONTRACT_WORKDIR.into(),
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        env: EnvMap::default(),
        cwd: None,
        stdin: None,
        timeout: Duration::from_secs(20),
        max_output_bytes: 64 * 1024,
    }
}

/// A script request in `project`'s pod.
pub fn script(project: &str, text: &str) -> ExecRequest {
    ExecRequest { argv: CommandSpec::Script(text.to_owned()).to_argv(), ..argv(project, &["true"]) }
}
