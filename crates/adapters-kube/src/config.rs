//! How the Kubernetes backend is configured: one struct, built once by the app.

use std::time::Duration;

/// Where pods live and how the backend paces its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// Namespace of every project pod (`KUBE_NAMESPACE`).
    pub namespace: String,
    /// Name of the pod's one container, the one commands run in.
    pub container_name: String,
    /// How long `start` waits for an old pod that is still terminating to go before it creates
    /// the new one.
    pub ready_timeout: Duration,
    /// How long a killed command gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Bound on each plain API call (get, create, delete, list, logs) and on opening an exec
    /// stream; past it the API counts as unavailable.
    pub api_timeout: Duration,
    /// Absolute directory inside the container for per-command bookkeeping (the kill flag,
    /// `<state_dir>/<command_id>/kill`); must be writable by [`Self::command_uid`], hence under
    /// `/tmp` by default.
    pub state_dir: String,
    /// The uid every process of a project pod runs as (`runAsUser`), never root
    /// (`COMMAND_UID`).
    pub command_uid: i64,
    /// The gid every process of a project pod runs as (`runAsGroup`, and `fsGroup` for its
    /// volumes) (`COMMAND_GID`).
    pub command_gid: i64,
    /// How long a pod seen ready is trusted without reading it again before a command; zero
    /// reads it before every command. A pod watch built from the backend keeps it current.
    pub pod_cache_ttl: Duration,
}

impl KubeConfig {
    /// Container name used when none is configured.
    pub const DEFAULT_CONTAINER: &'static str = "main";
    /// Bookkeeping directory used when none is configured.
    pub const DEFAULT_STATE_DIR: &'static str = "/tmp/rdev";
    /// Uid and gid of commands when none is configured: distroless's `nonroot` (65532). An
    /// explicit id, not only `runAsNonRoot`, because many images default to root and the
    /// kubelet would refuse to start them.
    pub const DEFAULT_COMMAND_ID: i64 = 65532;

    /// Defaults for `namespace`: container `main`, pods ready within 2 minutes, a 5 s kill grace,
    /// 10 s per API call, bookkeeping under `/tmp/rdev`, commands as uid and gid 65532, a pod
    /// seen ready trusted for 30 s.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            container_name: Self::DEFAULT_CONTAINER.to_owned(),
            ready_timeout: Duration::from_secs(120),
            kill_grace: Duration::from_secs(5),
            api_timeout: Duration::from_secs(10),
            state_dir: Self::DEFAULT_STATE_DIR.to_owned(),
            command_uid: Self::DEFAULT_COMMAND_ID,
            command_gid: Self::DEFAULT_COMMAND_ID,
            pod_cache_ttl: Duration::from_secs(30),
        }
    }
}
