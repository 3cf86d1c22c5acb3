//! What the scheduler and the kubelet would do to a pod: bind it, start its containers, stop
//! them on delete, restart them after an OOM kill. Each step is one stored change.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use crate::pod::{self, OomOutcome};
use crate::state::{PodKey, Sim};
use crate::status::ApiError;

/// The longest a graceful delete takes in the sim, whatever grace period was asked for.
pub(crate) const MAX_GRACE: Duration = Duration::from_secs(1);

/// Appends a line to a container's log (what `pods/log` serves).
pub(crate) fn append_log(sim: &Sim, namespace: &str, pod: &str, container: &str, text: &str) {
    let path = sim.log_path(namespace, pod, container);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(&path))
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the container log");
    }
}

/// Prepares a fresh "container filesystem" for a new pod (a same-named earlier pod's files go).
pub(crate) async fn prepare_dirs(sim: &Sim, namespace: &str, name: &str) -> std::io::Result<()> {
    let dir = sim.pod_dir(namespace, name);
    let logs = sim.pod_log_dir(namespace, name);
    remove_dirs(sim, namespace, name).await;
    tokio::fs::create_dir_all(&dir).await?;
    tokio::fs::create_dir_all(&logs).await
}

async fn remove_dirs(sim: &Sim, namespace: &str, name: &str) {
    for dir in [sim.pod_dir(namespace, name), sim.pod_log_dir(namespace, name)] {
        remove_dir(&dir).await;
    }
}

async fn remove_dir(dir: &std::path::Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a pod directory"),
    }
}

/// Takes a newly created pod through scheduling and container start.
pub(crate) fn run_pod(sim: Arc<Sim>, key: PodKey, uid: String) {
    tokio::spawn(async move {
        let now = Utc::now();
        let scheduled = sim.update_pod(&key, &uid, |p| {
            pod::schedule(p, now);
            true
        });
        let accepted = scheduled.and_then(|_| {
            sim.update_pod(&key, &uid, |p| {
                if pod::is_terminating(p) {
                    return false;
                }
                pod::kubelet_accepts(p, Utc::now());
                true
            })
        });
        if accepted.is_none() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(sim.config.ready_delay) => {}
            () = sim.shutdown.cancelled() => return,
        }
        let Some(current) = sim.pod(&key.0, &key.1).filter(|p| pod::meta_str(p, "uid") == Some(uid.as_str())) else {
            return;
        };
        if pod::is_terminating(&current) {
            return;
        }
        for container in pod::container_names(&current) {
            append_log(&sim, &key.0, &key.1, &container, &format!("kube-sim: container {container} started\n"));
        }
        let ip = sim.next_pod_ip();
        sim.update_pod(&key, &uid, |p| {
            if pod::is_terminating(p) {
                return false;
            }
            pod::start_containers(p, Utc::now(), &ip);
            true
        });
    });
}

/// What a DELETE asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DeleteOptions {
    /// `gracePeriodSeconds`; the pod's `terminationGracePeriodSeconds` when unset.
    pub grace_seconds: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun`: answer as if deleted, change nothing.
    pub dry_run: bool,
}

/// Deletes a pod the way the apiserver and kubelet do; the answer is the Pod (200).
pub(crate) async fn delete_pod(
    sim: &Arc<Sim>,
    namespace: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Value, ApiError> {
    let current = sim.pod(namespace, name).ok_or_else(|| ApiError::not_found("pods", name))?;
    let uid = pod::meta_str(&current, "uid").unwrap_or_default().to_owned();
    if let Some(expected) = opts.uid.as_deref().filter(|u| *u != uid) {
        return Err(ApiError::conflict(
            "pods",
            name,
            format!("Precondition failed: UID in precondition: {expected}, UID in object meta: {uid}"),
        ));
    }
    let rv = pod::meta_str(&current, "resourceVersion").unwrap_or_default();
    if let Some(expected) = opts.resource_version.as_deref().filter(|r| *r != rv) {
        return Err(ApiError::conflict(
            "pods",
            name,
            format!("Precondition failed: ResourceVersion in precondition: {expected}, ResourceVersion in object meta: {rv}"),
        ));
    }
    if opts.dry_run {
        return Ok(current);
    }
    let key = (namespace.to_owned(), name.to_owned());
    let default_grace = current.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30);
    let grace = opts.grace_seconds.unwrap_or(default_grace).max(0);
    let finished = matches!(pod::phase(&current), "Succeeded" | "Failed");
    if grace == 0 || !pod::is_scheduled(&current) || finished {
        return finish(sim, &key, &uid).await.ok_or_else(|| ApiError::not_found("pods", name));
    }
    if pod::is_terminating(&current) {
        return Ok(current);
    }
    let marked = sim.update_pod(&key, &uid, |p| {
        pod::mark_deleting(p, Utc::now(), grace);
        true
    });
    let marked = marked.ok_or_else(|| ApiError::not_found("pods", name))?;
    let wait = Duration::from_secs(u64::try_from(grace).unwrap_or(0)).min(MAX_GRACE);
    let sim = Arc::clone(sim);
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = sim.shutdown.cancelled() => return,
        }
        finish(&sim, &key, &uid).await;
    });
    Ok(marked)
}

/// The containers are gone: remove the object (DELETED), then kill what ran in them, so that
/// an exec client that sees its command killed finds the pod already gone.
///
/// The pod's directories are moved aside in the same step as the removal: whoever sees the
/// pod gone finds no directory, and a same-named pod created right after keeps the fresh
/// directories it prepared (a removal by name after the kill could take them).
async fn finish(sim: &Sim, key: &PodKey, uid: &str) -> Option<Value> {
    let trash = sim.trash_dir(uid);
    let removed = sim.remove_pod(key, uid, |p| {
        pod::stop_containers(p, Utc::now());
        move_aside(sim, key, &trash);
    })?;
    sim.processes.kill_pod(uid, None);
    remove_dir(&trash).await;
    Some(removed)
}

/// Renames the pod's directories into `trash` (one rename each, so it is quick enough to run
/// under the store's lock).
fn move_aside(sim: &Sim, key: &PodKey, trash: &std::path::Path) {
    let moves =
        [(sim.pod_dir(&key.0, &key.1), trash.join("fs")), (sim.pod_log_dir(&key.0, &key.1), trash.join("logs"))];
    if let Err(e) = std::fs::create_dir_all(trash) {
        tracing::warn!(dir = %trash.display(), error = %e, "cannot prepare a deleted pod's trash");
        return;
    }
    for (from, to) in moves {
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %from.display(), error = %e, "cannot move a deleted pod's directory aside"),
        }
    }
}

/// Node-pressure signals the kubelet evicts for (`resource` of `POST /_sim/pods/{ns}/{name}/evict`).
pub(crate) const EVICTION_RESOURCES: [&str; 3] = ["memory", "ephemeral-storage", "pid"];

/// The kubelet evicts a running pod under node pressure: its status says so first, then every
/// process of the pod dies (137). The object stays (phase `Failed`) until someone deletes it.
pub(crate) fn evict(sim: &Sim, namespace: &str, name: &str, resource: &str) -> Result<Value, ApiError> {
    if !EVICTION_RESOURCES.contains(&resource) {
        return Err(ApiError::bad_request(format!(
            "unsupported eviction resource {resource:?}: supported values: \"{}\"",
            EVICTION_RESOURCES.join("\", \"")
        )));
    }
    let current = sim.pod(namespace, name).ok_or_else(|| ApiError::not_found("pods", name))?;
    let uid = pod::meta_str(&current, "uid").unwrap_or_default().to_owned();
    if !pod::is_scheduled(&current) {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    }
    if matches!(pod::phase(&current), "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!("pod {name} has already terminated")));
    }
    let key = (namespace.to_owned(), name.to_owned());
    let message = pod::eviction_message(resource);
    let updated = sim.update_pod(&key, &uid, |p| {
        pod::evict(p, Utc::now(), &message);
        true
    });
    let updated = updated.ok_or_else(|| ApiError::not_found("pods", name))?;
    for container in pod::container_names(&updated) {
        append_log(sim, namespace, name, &container, &format!("kube-sim: pod evicted: {message}\n"));
    }
    sim.processes.kill_pod(&uid, None);
    Ok(updated)
}

/// The kernel OOM-kills a container: its status says so first, then its processes die (137).
pub(crate) fn oom_kill(sim: &Sim, namespace: &str, name: &str, container: Option<&str>) -> Result<Value, ApiError> {
    let current = sim.pod(namespace, name).ok_or_else(|| ApiError::not_found("pods", name))?;
    let uid = pod::meta_str(&current, "uid").unwrap_or_default().to_owned();
    let container = match container {
        Some(c) => c.to_owned(),
        None => pod::container_names(&current).into_iter().next().unwrap_or_default(),
    };
    if pod::container_spec(&current, &container).is_none() {
        return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")));
    }
    if !pod::container_running(&current, &container) {
        return Err(ApiError::bad_request(format!("container {container} in pod {name} is not running")));
    }
    let key = (namespace.to_owned(), name.to_owned());
    let mut outcome = OomOutcome::Terminated;
    let updated = sim.update_pod(&key, &uid, |p| {
        outcome = pod::oom_kill(p, &container, Utc::now());
        true
    });
    let updated = updated.ok_or_else(|| ApiError::not_found("pods", name))?;
    append_log(
        sim,
        namespace,
        name,
        &container,
        &format!("kube-sim: container {container} OOMKilled (exit code 137)\n"),
    );
    if outcome == OomOutcome::Restarted {
        append_log(sim, namespace, name, &container, &format!("kube-sim: container {container} started\n"));
    }
    sim.processes.kill_pod(&uid, Some(&container));
    Ok(updated)
}
