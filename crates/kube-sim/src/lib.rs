//! kube-sim: a small Kubernetes API server for tests and local runs.
//!
//! It speaks the wire formats that kube-rs and `kubectl` expect (see `shared/kube-protocol.md`)
//! for what rdev-api uses: discovery, namespaces (get, list), pods (create, get, list and watch
//! with label and field selectors, delete, `pods/eviction`), `pods/log` and `pods/exec` over
//! WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`), and `coordination.k8s.io/v1` leases
//! (create, get, list, replace, delete). Plain HTTP on loopback; optional bearer token.
//!
//! # How the simulated cluster behaves
//!
//! - **Namespaces** exist implicitly: any valid name can be read and used; the list shows the
//!   usual system namespaces plus every namespace seen so far.
//! - **Pods** are stored as created, with the apiserver's defaults filled in, and go
//!   Pending → scheduled (`spec.nodeName`, `PodScheduled`) → kubelet status (`ContainerCreating`)
//!   → Running after [`SimConfig::ready_delay`]; every change is a new `resourceVersion` and a
//!   MODIFIED watch event. No image is pulled and no main process runs: the "container" is the
//!   pod's directory.
//! - **Deletion** with a grace period sets `deletionTimestamp`, then after `min(grace, 1 s)` kills
//!   every exec process of the pod and removes it (DELETED). Grace 0, an unscheduled pod or a
//!   finished pod is removed at once. The pod's directory is removed with the pod.
//! - **Watches** replay the history after their `resourceVersion` (`410 Expired` as an ERROR
//!   event for one older than the history holds), end after `timeoutSeconds`, and with
//!   `allowWatchBookmarks=true` carry a BOOKMARK every [`SimConfig::bookmark_interval`] and
//!   one before they end. A compaction ends every live watch with the `410` ERROR event.
//! - **Leases** are stored as created; a replace (PUT) needs the current
//!   `metadata.resourceVersion` (409 Conflict on another, 422 without one) and creates a
//!   missing lease; the resourceVersion counter is shared with pods, as etcd's revision is.
//! - **Evictions**: `pods/{name}/eviction` (policy/v1) deletes the pod as its `deleteOptions`
//!   say (no PodDisruptionBudget exists); a kubelet eviction under node pressure (control
//!   endpoint) fails the pod (`Evicted`) and kills its processes.
//! - **Exec** runs `command` as a local process, not in a container: cwd is the pod's directory
//!   ([`KubeSim::pod_dir`], `pods_root/<namespace>/<pod>`), the environment is `PATH` (a minimal
//!   default), `HOME` (the pod's directory), `HOSTNAME` (the pod name), the container's literal
//!   `env` entries and the marker `KUBE_SIM_POD_UID`. The directory goes with the pod: it is
//!   moved aside (`pods_root/.trash/<uid>`) in the same step that removes the object, then
//!   removed once the pod's processes are killed. Absolute paths are host paths; the
//!   container's `workingDir` is not applied. Each exec leads its own process group.
//!   Exec processes run as the simulator's own user (a pod's `securityContext` is stored, not
//!   enforced) and see the host's `/proc`, where they can read each other's
//!   `/proc/<pid>/environ`: rdev-api's wrapper finds a command's processes there by their
//!   tracking cookie, as it does in a real pod's PID namespace.
//!   As on a real kubelet, a client that disconnects only closes the process's stdin: the process
//!   runs on and its output and exit code go nowhere.
//! - **A pod that dies under its execs** (deletion, OOM kill) SIGKILLs their process groups (and
//!   any process that still carries the pod's marker): a connected client gets what a real
//!   cluster sends when the container's processes are killed, `NonZeroExitCode` with exit code
//!   137. On deletion the pod object is removed *before* the kill, so a client that sees 137
//!   and reads the pod gets a 404 (pod gone); on an OOM kill the container's `OOMKilled` state is
//!   written before the kill. A client that sees 137 otherwise killed the process itself.
//! - **Exec details**: `stdin`, `stdout`, `stderr` are pipes (`tty` is accepted and ignored;
//!   resize frames are ignored). After the process exits, output is still read for 250 ms (a
//!   background child may hold the pipes), then the status is sent. Pids are host pids.
//!   A command that cannot start yields containerd's `InternalError`
//!   (`… exec: "x": executable file not found in $PATH: unknown`); a container that is not
//!   running yields `InternalError` `unable to upgrade connection: container not found ("c")`,
//!   both on channel 3 after the upgrade, as through a real apiserver.
//! - **Logs**: the container log is a file per container under `pods_root/.logs/<ns>/<pod>/`,
//!   to which the sim appends lifecycle lines (`kube-sim: container main started`, OOM kills,
//!   restarts); tests may append lines with `POST /_sim/pods/{ns}/{name}/log`. What execs print
//!   is not part of the container log, as on a real cluster.
//!
//! # Control endpoint (`/_sim/`, same listener, never subject to faults or auth)
//!
//! - `POST /_sim/faults` with [`Faults`] as JSON replaces the current faults; `DELETE` clears
//!   them; `GET` shows them. Faults touch only the Kubernetes API routes, in this order:
//!   `refuse_connections` closes the connection without an answer (every request, at once);
//!   `latency_ms` delays the request; `error_status` answers that status with a matching
//!   `Status` body (`Retry-After: 1` on 429/503) and `drop_connections` closes the connection
//!   without an answer, each for the `error_rate` share of requests (all when unset);
//!   `omit_exec_status` ends exec streams with Close 1000 but no channel-3 status.
//! - `POST /_sim/pods/{ns}/{name}/oom[?container=c]` OOM-kills the container (Never: pod
//!   Failed; Always/OnFailure: `lastState.terminated.reason=OOMKilled`, `restartCount`+1) and
//!   SIGKILLs its execs (137). Answers the Pod.
//! - `POST /_sim/pods/{ns}/{name}/evict[?resource=memory|ephemeral-storage|pid]` evicts the
//!   pod as the kubelet does under node pressure: phase `Failed`, reason `Evicted`, message
//!   `The node was low on resource: <resource>. `, a `DisruptionTarget` condition, containers
//!   terminated (137, `ContainerStatusUnknown`), then its execs SIGKILLed (137). Answers the Pod.
//! - `POST /_sim/compact` compacts the watch history: every earlier resourceVersion is too old
//!   (`410 Expired`), live watches end with that error. Answers `{"resourceVersion":"N"}`.
//! - `GET /_sim/stats` answers `{"api_requests":N,"pod_reads":M}`: Kubernetes API requests
//!   so far, refused and faulted ones included, and of those the single-pod reads (`GET
//!   pods/{name}` and `/status`) that reached the API (to see what a client's cache saves).
//! - `GET /_sim/pods/{ns}/{name}/processes` lists the running exec processes:
//!   `{"pids":[…],"processes":[{"pid":…,"container":"main","command":[…]}]}`.
//! - `POST /_sim/pods/{ns}/{name}/log[?container=c]` appends the request body to the container log.
//!
//! # Not simulated
//!
//! PATCH/PUT of pods, watches of leases, PodDisruptionBudgets, `pods/attach`, port-forward,
//! SPDY (kubectl falls back to it only after a failed WebSocket upgrade, and then gets the same
//! error `Status`), the OpenAPI documents
//! (`kubectl create -f` needs `--validate=false`), streaming lists (`sendInitialEvents` gets the
//! 422 that makes clients fall back to list + watch), list pagination (`limit` is ignored, no
//! `continue`), Table output for watches, log `timestamps`/`sinceSeconds`/`previous`, init
//! containers, probes, resource enforcement, and real isolation: execs run on the host.

mod api;
mod exec;
mod faults;
mod kubeconfig;
mod kubelet;
mod lease;
mod pod;
mod processes;
mod query;
mod selector;
mod server;
mod state;
mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use faults::Faults;

/// How a [`KubeSim`] listens and behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How long a created pod stays Pending before it is Running.
    pub ready_delay: Duration,
    /// Parent of every pod's directory (`<pods_root>/<namespace>/<pod>`); created on start.
    pub pods_root: PathBuf,
    /// Bearer token every Kubernetes API request must carry; `None` accepts anonymous requests.
    pub token: Option<String>,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK (the apiserver: about
    /// once a minute).
    pub bookmark_interval: Duration,
}

impl SimConfig {
    /// Loopback on a free port, pods ready after 200 ms, no token, a bookmark every second.
    pub fn for_tests(pods_root: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ready_delay: Duration::from_millis(200),
            pods_root,
            token: None,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// A running simulator. Dropping it without [`KubeSim::shutdown`] still kills every exec
/// process and stops its tasks, but does not wait for them.
#[derive(Debug)]
pub struct KubeSim {
    sim: Arc<state::Sim>,
    server: server::ServerHandle,
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.sim.kill_all_processes();
        self.sim.shutdown.cancel();
    }
}

impl KubeSim {
    /// Binds the listener, creates `pods_root` (emptying the trash a sim that stopped before
    /// removing its deleted pods' directories left there) and starts serving.
    ///
    /// # Errors
    /// When the address cannot be bound or `pods_root` cannot be created.
    pub async fn start(config: SimConfig) -> std::io::Result<KubeSim> {
        tokio::fs::create_dir_all(&config.pods_root).await?;
        match tokio::fs::remove_dir_all(config.pods_root.join(state::TRASH)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let local = listener.local_addr()?;
        let sim = Arc::new(state::Sim::new(config, local));
        let server = server::serve(listener, Arc::clone(&sim));
        tracing::info!(url = %sim.base_url, "kube-sim listening");
        Ok(KubeSim { sim, server })
    }

    /// The server URL, e.g. `http://127.0.0.1:40123`.
    pub fn base_url(&self) -> String {
        self.sim.base_url.clone()
    }

    /// A kubeconfig (YAML) that kube-rs and kubectl accept, with `namespace` as the default.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        kubeconfig::render(&self.sim.base_url, namespace, self.sim.config.token.as_deref())
    }

    /// Writes [`KubeSim::kubeconfig_yaml`] to `path` (parent directories are created).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, self.kubeconfig_yaml(namespace))
    }

    /// The pod's "container filesystem": the directory its exec processes run in.
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.sim.pod_dir(namespace, pod)
    }

    /// Replaces the injected faults (same as `POST /_sim/faults`).
    pub fn set_faults(&self, faults: Faults) {
        self.sim.faults.set(faults);
    }

    /// Compacts the watch history (same as `POST /_sim/compact`): watches from any earlier
    /// resourceVersion get `410 Expired`, live ones end with it. Returns the new resourceVersion.
    pub fn compact(&self) -> u64 {
        self.sim.compact()
    }

    /// Kubernetes API requests seen so far (same as `GET /_sim/stats`).
    pub fn api_requests(&self) -> u64 {
        self.sim.api_requests()
    }

    /// Reads of a single pod (`GET pods/{name}`, `/status`) seen so far (`pod_reads` in
    /// `GET /_sim/stats`).
    pub fn pod_reads(&self) -> u64 {
        self.sim.pod_reads()
    }

    /// Clears the injected faults (same as `DELETE /_sim/faults`).
    pub fn clear_faults(&self) {
        self.sim.faults.set(Faults::default());
    }

    /// Kills every exec process, stops listening and closes every connection.
    pub async fn shutdown(mut self) {
        self.sim.kill_all_processes();
        self.sim.shutdown.cancel();
        self.server.stop().await;
    }
}
