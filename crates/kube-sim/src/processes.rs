//! The exec processes of each pod, and killing them all when the pod's container dies.
//!
//! Every exec leads its own process group and carries `KUBE_SIM_POD_UID=<uid>` in its
//! environment. Killing a pod's processes SIGKILLs the groups of its running execs, then every
//! process that still carries the pod's marker (children that left the group, and the leftovers
//! of execs that already ended), as the death of a container's init kills its whole PID namespace.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;

/// The environment variable that tags every exec process with its pod.
pub(crate) const POD_MARKER_ENV: &str = "KUBE_SIM_POD_UID";
/// The environment variable that tags every exec process with its container.
pub(crate) const CONTAINER_MARKER_ENV: &str = "KUBE_SIM_CONTAINER";

/// One running exec, as `GET /_sim/pods/{ns}/{name}/processes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ExecProcess {
    /// Its pid, which is also its process group id.
    pub pid: i32,
    /// The container it runs in.
    pub container: String,
    /// The argv it was started with.
    pub command: Vec<String>,
}

/// Running exec processes, keyed by pod uid (a pod re-created under the same name is another pod).
#[derive(Debug, Default)]
pub(crate) struct ProcessTable {
    by_pod: Mutex<HashMap<String, Vec<ExecProcess>>>,
}

impl ProcessTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<ExecProcess>>> {
        self.by_pod.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a started exec.
    pub(crate) fn register(&self, pod_uid: &str, process: ExecProcess) {
        self.lock().entry(pod_uid.to_owned()).or_default().push(process);
    }

    /// Forgets an exec whose leader exited.
    pub(crate) fn unregister(&self, pod_uid: &str, pid: i32) {
        let mut table = self.lock();
        if let Some(list) = table.get_mut(pod_uid) {
            list.retain(|p| p.pid != pid);
            if list.is_empty() {
                table.remove(pod_uid);
            }
        }
    }

    /// The running execs of a pod.
    pub(crate) fn list(&self, pod_uid: &str) -> Vec<ExecProcess> {
        self.lock().get(pod_uid).cloned().unwrap_or_default()
    }

    /// SIGKILLs everything the pod (or only one of its containers) started; the exec sessions
    /// then report exit code 137.
    pub(crate) fn kill_pod(&self, pod_uid: &str, container: Option<&str>) {
        let groups: Vec<i32> =
            self.list(pod_uid).iter().filter(|p| container.is_none_or(|c| c == p.container)).map(|p| p.pid).collect();
        for group in groups {
            kill_group(group);
        }
        let marker = format!("{POD_MARKER_ENV}={pod_uid}").into_bytes();
        let container_marker = container.map(|c| format!("{CONTAINER_MARKER_ENV}={c}").into_bytes());
        kill_marked(|environ| {
            let has = |m: &[u8]| environ.split(|b| *b == 0).any(|var| var == m);
            has(&marker) && container_marker.as_deref().is_none_or(has)
        });
    }

    /// SIGKILLs every exec of these pods and every registered exec (shutdown).
    pub(crate) fn kill_all(&self, pod_uids: &[String]) {
        let mut uids: Vec<String> = pod_uids.to_vec();
        let groups: Vec<i32> = {
            let table = self.lock();
            uids.extend(table.keys().cloned());
            table.values().flatten().map(|p| p.pid).collect()
        };
        for group in groups {
            kill_group(group);
        }
        let markers: Vec<Vec<u8>> = uids.iter().map(|uid| format!("{POD_MARKER_ENV}={uid}").into_bytes()).collect();
        kill_marked(|environ| environ.split(|b| *b == 0).any(|var| markers.iter().any(|m| m.as_slice() == var)));
    }
}

fn kill_group(group: i32) {
    match killpg(Pid::from_raw(group), Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(group, error = %e, "cannot kill an exec's process group"),
    }
}

/// SIGKILLs every process (but this one) whose environment (`/proc/<pid>/environ`) is `selected`.
#[cfg(target_os = "linux")]
fn kill_marked(selected: impl Fn(&[u8]) -> bool) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Processes vanish during the scan; an unreadable environment is simply not ours.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if selected(&environ) {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_marked(_selected: impl Fn(&[u8]) -> bool) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_list_unregister() {
        let table = ProcessTable::default();
        table.register("u1", ExecProcess { pid: 10, container: "c".into(), command: vec!["sh".into()] });
        table.register("u1", ExecProcess { pid: 11, container: "c".into(), command: vec!["true".into()] });
        assert_eq!(table.list("u1").len(), 2);
        table.unregister("u1", 10);
        assert_eq!(
            table.list("u1"),
            vec![ExecProcess { pid: 11, container: "c".into(), command: vec!["true".into()] }]
        );
        table.unregister("u1", 11);
        assert!(table.list("u1").is_empty());
    }
}
