//! rdev-api's Kubernetes backend: one development pod per project, and commands run in it
//! through `pods/exec` (kube-rs, WebSocket `v5.channel.k8s.io` with `v4` fallback).
//!
//! [`KubeBackend`] implements both [`PodManager`] and [`Executor`]; [`KubePodWatch`] implements
//! [`domain::ports::PodWatch`] (leader election through a Lease, then list + watch of the managed
//! pods).
//!
//! - **Pods** are named `rdev-<project>`, labelled `app.kubernetes.io/managed-by=rdev-api` and
//!   `rdev.dev/project=<project>`, built from the project's image, workdir (`workingDir`), env and
//!   resources (requests = limits), with a main process that only keeps the container alive.
//! - **Commands** need a ready pod: [`Executor::run`] never creates one. It answers
//!   `StartFailed` ("pod … is not ready") when the pod is missing or not ready, so the caller
//!   (the queue worker) runs [`PodManager::start`] and [`PodManager::wait_ready`] first. A pod
//!   this backend saw ready (any read of it, or the [`KubePodWatch`] built from it) within
//!   [`KubeConfig::pod_cache_ttl`] is not read again before a command; an exec it refuses
//!   drops that and the run starts over with a read (see `ready_pods.rs`).
//! - The exec API has no cwd, env or timeout, and closing its stream kills nothing, so each
//!   command runs under a small `sh` wrapper (see `wrapper.rs`): it enters the working
//!   directory, exports the request's env on top of the container's, reports a failed start on
//!   a control line, and starts the program in its own session with an environment cookie,
//!   `RDEV_COMMAND_TRACKING_ID=<command id>`, that every descendant inherits. When the program
//!   exits, the wrapper stops, rescans and kills every process still carrying the cookie
//!   (`setsid`, `nohup` and double-forked ones too) before it reports the exit. A timeout or
//!   cancel opens a second exec that raises a kill flag under [`KubeConfig::state_dir`] (for a
//!   command that has not started yet), SIGTERMs every process with the cookie, waits up to
//!   [`KubeConfig::kill_grace`], then does the same stop-rescan-kill sweep.
//! - **Pods run unprivileged**: as [`KubeConfig::command_uid`]/[`KubeConfig::command_gid`]
//!   (65532 by default) with `runAsNonRoot`, the `RuntimeDefault` seccomp profile, no privilege
//!   escalation, every capability dropped and no service-account token.
//! - The exit code comes from the status channel. A stream that ends without one is never exit 0:
//!   the pod is read to tell `pod_gone` (deleted, replaced) and `oom_killed` from `Unknown`.
//!
//! The pod image needs a POSIX `sh` with `mkdir`, `rm`, `grep`, `tr`, `sleep` and `kill`, and
//! `setsid` so that a command's own `kill 0` cannot reach the wrapper (busybox and every
//! distribution image have them), plus a writable `/tmp` (or [`KubeConfig::state_dir`]) for
//! the non-root user. The sweep is one `grep -z` over `/proc` where grep has `-z`; a busybox
//! built without it falls back to a `tr | grep` per process, slower in a crowded pod. A process
//! that deliberately clears its environment escapes the sweep; the pod is the boundary then.

mod config;
mod error;
mod exec;
mod exit;
mod kill;
mod leader;
mod manifest;
mod output;
mod pod_watch;
mod pods;
mod ready_pods;
mod status;
mod tracker;
mod wrapper;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use domain::pod::{PodSpec, PodStatus};
use domain::ports::{ExecRequest, ExecResult, Executor, OutputSink, PodManager};
use domain::project::ProjectName;
use domain::DomainResult;
use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::KubeConfig;
pub use error::KubeError;
pub use leader::REPORTED_ANNOTATION;
pub use manifest::{pod_manifest, pod_name, MANAGED_BY, MANAGED_BY_LABEL, PROJECT_LABEL};
pub use pod_watch::{KubePodWatch, PodWatchConfig};
pub use status::pod_status;
pub use wrapper::TRACKING_ENV;

/// The exec argv the executor sends for `request` in a pod whose `workingDir` is the request's
/// workdir: for benchmarks that time the wrapper on its own.
#[doc(hidden)]
pub fn wrapper_argv(request: &ExecRequest, state_root: &str) -> Vec<String> {
    wrapper::run_argv(request, state_root, false)
}

/// Pods and commands on a Kubernetes cluster (the `kube` executor).
#[derive(Clone)]
pub struct KubeBackend {
    client: Client,
    pods: Api<Pod>,
    config: KubeConfig,
    ready: ready_pods::ReadyPods,
}

impl std::fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend").field("config", &self.config).finish_non_exhaustive()
    }
}

impl KubeBackend {
    /// A backend over an existing client; nothing is contacted until the first call.
    pub fn new(client: Client, config: KubeConfig) -> Self {
        let pods = Api::namespaced(client.clone(), &config.namespace);
        let ready = ready_pods::ReadyPods::new(&config.container_name, config.pod_cache_ttl);
        Self { client, pods, config, ready }
    }

    /// A backend from the kubeconfig file at `path`, or, without one, from the environment
    /// (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
    ///
    /// # Errors
    /// `Config` when no usable configuration is found or the client cannot be built.
    pub async fn from_kubeconfig(path: Option<&Path>, config: KubeConfig) -> Result<Self, KubeError> {
        let kube_config = match path {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| KubeError::Config(format!("cannot read {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
            }
            None => kube::Config::infer().await.map_err(|e| KubeError::Config(e.to_string()))?,
        };
        let client = Client::try_from(kube_config).map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(Self::new(client, config))
    }

    /// The configuration this backend runs with.
    pub fn config(&self) -> &KubeConfig {
        &self.config
    }

    /// The underlying client (for health checks or tools that need more than the ports).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the API answers a cheap, RBAC-permitted call (list one managed pod).
    ///
    /// # Errors
    /// `ApiUnavailable` when it does not answer in time or answers 5xx; `Forbidden` on 401/403.
    pub async fn ping(&self) -> Result<(), KubeError> {
        let params = kube::api::ListParams::default().labels(&manifest::managed_selector()).limit(1);
        error::bounded("list pods", self.config.api_timeout, self.pods.list(&params)).await.map(|_| ())
    }

    /// Runs `request` and reports how it ended; see the crate docs for what it needs first.
    pub async fn run(&self, request: ExecRequest, sink: &dyn OutputSink, cancel: CancellationToken) -> ExecResult {
        let span = tracing::info_span!(
            "kube_exec",
            project = %request.project,
            command_id = %request.command_id,
            pod = %pod_name(&request.project),
        );
        exec::execute(self, request, sink, cancel).instrument(span).await
    }
}

#[async_trait]
impl Executor for KubeBackend {
    async fn run(&self, request: ExecRequest, sink: &dyn OutputSink, cancel: CancellationToken) -> ExecResult {
        KubeBackend::run(self, request, sink, cancel).await
    }

    async fn check(&self) -> DomainResult<()> {
        self.ping().await.map_err(|e| {
            tracing::warn!(error = %e, "kubernetes API check failed");
            e.into()
        })
    }
}

#[async_trait]
impl PodManager for KubeBackend {
    async fn status(&self, project: &ProjectName) -> DomainResult<PodStatus> {
        Ok(self.pod_status(project).await?)
    }

    async fn start(&self, spec: &PodSpec) -> DomainResult<PodStatus> {
        Ok(self.start_pod(spec).await?)
    }

    async fn wait_ready(&self, project: &ProjectName, timeout: Duration) -> DomainResult<PodStatus> {
        Ok(self.wait_pod_ready(project, timeout).await?)
    }

    async fn stop(&self, project: &ProjectName) -> DomainResult<PodStatus> {
        Ok(self.stop_pod(project).await?)
    }

    async fn logs(&self, project: &ProjectName, tail: u32) -> DomainResult<Vec<String>> {
        Ok(self.pod_logs(project, tail).await?)
    }
}
