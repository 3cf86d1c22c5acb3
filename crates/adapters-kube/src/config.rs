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
    /// Absolute directory inside the container for per-command bookkeeping
    /// (`<state_dir>/<command_id>/pgid`); must be writable by the container's user.
    pub state_dir: String,
}

impl KubeConfig {
    /// Container name used when none is configured.
    pub const DEFAULT_CONTAINER: &'static str = "main";
    /// Bookkeeping directory used when none is configured.
    pub const DEFAULT_STATE_DIR: &'static str = "/tmp/rdev";

    /// Defaults for `namespace`: container `main`, pods ready within 2 minutes, a 5 s kill grace,
    /// 10 s per API call, bookkeeping under `/tmp/rdev`.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            container_name: Self::DEFAULT_CONTAINER.to_owned(),
            ready_timeout: Duration::from_secs(120),
            kill_grace: Duration::from_secs(5),
            api_timeout: Duration::from_secs(10),
            state_dir: Self::DEFAULT_STATE_DIR.to_owned(),
        }
    }
}
