//! The Pod object: validation and defaults on create, and the status the scheduler and kubelet
//! would write at each step of its life. Pure functions over the stored JSON.

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::status::ApiError;

/// The one node every pod is scheduled to.
pub(crate) const NODE_NAME: &str = "kube-sim-node";
/// That node's address.
pub(crate) const HOST_IP: &str = "10.0.0.1";

/// Condition types in the order the kubelet lists them.
const CONDITION_ORDER: [&str; 6] =
    ["DisruptionTarget", "PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"];

/// A timestamp as Go's `metav1.Time` renders it (RFC 3339, UTC, seconds).
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Validates a create body and fills the apiserver's defaults; `Err` is the 400/422 to send.
pub(crate) fn admit(mut body: Value, namespace: &str, uid: &str, now: DateTime<Utc>) -> Result<Value, ApiError> {
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::bad_request("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml"));
    };
    if let Some(kind) = object.get("kind").and_then(Value::as_str).filter(|k| *k != "Pod") {
        return Err(ApiError::bad_request(format!("the API version in the data (v1) does not match the expected API version (v1) or the kind {kind} is not Pod")));
    }
    if let Some(version) = object.get("apiVersion").and_then(Value::as_str).filter(|v| *v != "v1") {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({version}) does not match the expected API version (v1)"
        )));
    }
    object.insert("kind".into(), json!("Pod"));
    object.insert("apiVersion".into(), json!("v1"));
    let metadata = object.entry("metadata").or_insert_with(|| json!({}));
    let Some(metadata) = metadata.as_object_mut() else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    if let Some(ns) = metadata.get("namespace").and_then(Value::as_str).filter(|ns| !ns.is_empty() && *ns != namespace)
    {
        tracing::debug!(body = ns, url = namespace, "namespace mismatch");
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let name = pod_name(metadata)?;
    for field in ["uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"] {
        metadata.remove(field);
    }
    metadata.insert("name".into(), json!(name));
    metadata.insert("namespace".into(), json!(namespace));
    metadata.insert("uid".into(), json!(uid));
    metadata.insert("creationTimestamp".into(), json!(timestamp(now)));

    let spec = object.get_mut("spec").and_then(Value::as_object_mut);
    let Some(spec) = spec else {
        return Err(ApiError::invalid(
            "Pod",
            &name,
            &[("FieldValueRequired", "Required value".into(), "spec.containers")],
        ));
    };
    default_spec(spec, &name)?;
    let qos = qos_class(spec);
    object.insert("status".into(), json!({"phase": "Pending", "qosClass": qos}));
    Ok(body)
}

fn pod_name(metadata: &Map<String, Value>) -> Result<String, ApiError> {
    let given = metadata.get("name").and_then(Value::as_str).unwrap_or_default();
    let name = if given.is_empty() {
        let Some(prefix) = metadata.get("generateName").and_then(Value::as_str).filter(|p| !p.is_empty()) else {
            return Err(ApiError::invalid(
                "Pod",
                "",
                &[("FieldValueRequired", "Required value: name or generateName is required".into(), "metadata.name")],
            ));
        };
        format!("{prefix}{}", random_suffix())
    } else {
        given.to_owned()
    };
    if !is_dns_subdomain(&name) {
        let message = format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        );
        return Err(ApiError::invalid("Pod", &name, &[("FieldValueInvalid", message, "metadata.name")]));
    }
    Ok(name)
}

/// Five characters from the alphabet the apiserver uses for `generateName` (no vowels).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5).map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())])).collect()
}

/// Whether `name` is a lowercase RFC 1123 subdomain (object names).
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= 253
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// Whether `name` is a lowercase RFC 1123 label (namespace and container names).
pub(crate) fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && is_dns_subdomain(name) && !name.contains('.')
}

fn default_spec(spec: &mut Map<String, Value>, pod: &str) -> Result<(), ApiError> {
    let containers = spec.get_mut("containers").and_then(Value::as_array_mut).filter(|c| !c.is_empty());
    let Some(containers) = containers else {
        return Err(ApiError::invalid(
            "Pod",
            pod,
            &[("FieldValueRequired", "Required value".into(), "spec.containers")],
        ));
    };
    let mut seen = Vec::new();
    for (i, container) in containers.iter_mut().enumerate() {
        let Some(container) = container.as_object_mut() else {
            return Err(ApiError::bad_request(format!("spec.containers[{i}] must be an object")));
        };
        let name = container.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        if name.is_empty() {
            let field = format!("spec.containers[{i}].name");
            return Err(ApiError::invalid("Pod", pod, &[("FieldValueRequired", "Required value".into(), &field)]));
        }
        if !is_dns_label(&name) || seen.contains(&name) {
            let field = format!("spec.containers[{i}].name");
            let (reason, what) = if seen.contains(&name) {
                ("FieldValueDuplicate", format!("Duplicate value: {name:?}"))
            } else {
                ("FieldValueInvalid", format!("Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"))
            };
            return Err(ApiError::invalid("Pod", pod, &[(reason, what, &field)]));
        }
        let image = container.get("image").and_then(Value::as_str).unwrap_or_default().to_owned();
        if image.trim().is_empty() {
            let field = format!("spec.containers[{i}].image");
            return Err(ApiError::invalid("Pod", pod, &[("FieldValueRequired", "Required value".into(), &field)]));
        }
        seen.push(name);
        let resources = container.entry("resources").or_insert_with(|| json!({}));
        default_requests_from_limits(resources);
        container.entry("terminationMessagePath").or_insert_with(|| json!("/dev/termination-log"));
        container.entry("terminationMessagePolicy").or_insert_with(|| json!("File"));
        let pull = if image_tag(&image).is_none_or(|t| t == "latest") && !image.contains('@') {
            "Always"
        } else {
            "IfNotPresent"
        };
        container.entry("imagePullPolicy").or_insert_with(|| json!(pull));
    }
    spec.entry("restartPolicy").or_insert_with(|| json!("Always"));
    spec.entry("terminationGracePeriodSeconds").or_insert_with(|| json!(30));
    spec.entry("dnsPolicy").or_insert_with(|| json!("ClusterFirst"));
    spec.entry("serviceAccountName").or_insert_with(|| json!("default"));
    let account = spec.get("serviceAccountName").cloned().unwrap_or_else(|| json!("default"));
    spec.entry("serviceAccount").or_insert(account);
    spec.entry("securityContext").or_insert_with(|| json!({}));
    spec.entry("schedulerName").or_insert_with(|| json!("default-scheduler"));
    spec.entry("enableServiceLinks").or_insert_with(|| json!(true));
    spec.entry("priority").or_insert_with(|| json!(0));
    spec.entry("preemptionPolicy").or_insert_with(|| json!("PreemptLowerPriority"));
    Ok(())
}

/// The apiserver copies a limit into the request of the same resource when no request is set.
fn default_requests_from_limits(resources: &mut Value) {
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    let Some(resources) = resources.as_object_mut() else {
        return;
    };
    let requests = resources.entry("requests").or_insert_with(|| json!({}));
    if let Some(requests) = requests.as_object_mut() {
        for (resource, quantity) in limits {
            requests.entry(resource).or_insert(quantity);
        }
    }
}

/// Guaranteed when every container limits cpu and memory at its requests, BestEffort when none
/// requests or limits anything, Burstable otherwise.
fn qos_class(spec: &Map<String, Value>) -> &'static str {
    let containers: Vec<&Value> =
        spec.get("containers").and_then(Value::as_array).map(|c| c.iter().collect()).unwrap_or_default();
    let section = |c: &Value, key: &str| {
        c.get("resources").and_then(|r| r.get(key)).and_then(Value::as_object).cloned().unwrap_or_default()
    };
    let any_set = containers.iter().any(|c| !section(c, "requests").is_empty() || !section(c, "limits").is_empty());
    if !any_set {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let (requests, limits) = (section(c, "requests"), section(c, "limits"));
        ["cpu", "memory"].iter().all(|r| limits.get(*r).is_some() && requests.get(*r) == limits.get(*r))
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn image_tag(image: &str) -> Option<&str> {
    let last = image.rsplit('/').next().unwrap_or(image);
    let last = last.split('@').next().unwrap_or(last);
    last.split_once(':').map(|(_, tag)| tag)
}

/// The fully qualified reference a container runtime reports (`docker.io/library/busybox:1.36`).
pub(crate) fn normalize_image(image: &str) -> String {
    let (first, _) = image.split_once('/').unwrap_or(("", image));
    let has_domain = !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_domain {
        image.to_owned()
    } else if image.contains('/') {
        format!("docker.io/{image}")
    } else {
        format!("docker.io/library/{image}")
    };
    if image_tag(image).is_none() && !image.contains('@') {
        full.push_str(":latest");
    }
    full
}

/// A stable fake digest for an image.
fn image_id(image: &str) -> String {
    let full = normalize_image(image);
    let repo = full.split('@').next().unwrap_or(&full);
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    format!("{repo}@sha256:{}", hex::encode(Sha256::digest(full.as_bytes())))
}

fn container_id() -> String {
    let bytes: [u8; 32] = rand::thread_rng().gen();
    format!("containerd://{}", hex::encode(bytes))
}

/// The names of the pod's containers, in spec order.
pub(crate) fn container_names(pod: &Value) -> Vec<String> {
    containers(pod).iter().filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned)).collect()
}

fn containers(pod: &Value) -> Vec<Value> {
    pod.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The container spec named `name`.
pub(crate) fn container_spec(pod: &Value, name: &str) -> Option<Value> {
    containers(pod).into_iter().find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

/// The status of container `name`.
pub(crate) fn container_status(pod: &Value, name: &str) -> Option<Value> {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|s| s.iter().find(|c| c.get("name").and_then(Value::as_str) == Some(name)))
        .cloned()
}

/// Whether container `name` is running (what exec and follow-logs need).
pub(crate) fn container_running(pod: &Value, name: &str) -> bool {
    container_status(pod, name).is_some_and(|s| s.pointer("/state/running").is_some())
}

/// A metadata string field.
pub(crate) fn meta_str<'a>(pod: &'a Value, field: &str) -> Option<&'a str> {
    pod.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

/// `status.phase`.
pub(crate) fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending")
}

/// Whether the pod has been bound to a node.
pub(crate) fn is_scheduled(pod: &Value) -> bool {
    pod.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty())
}

/// Whether a graceful delete is in progress.
pub(crate) fn is_terminating(pod: &Value) -> bool {
    meta_str(pod, "deletionTimestamp").is_some()
}

/// Runs `f` on `status` (made an object first); stored pods are always objects.
fn with_status<R>(pod: &mut Value, f: impl FnOnce(&mut Map<String, Value>) -> R) -> Option<R> {
    let status = &mut pod["status"];
    if !status.is_object() {
        *status = json!({});
    }
    status.as_object_mut().map(f)
}

/// Sets a condition, keeping its `lastTransitionTime` when the status does not change.
fn set_condition(pod: &mut Value, kind: &str, status: &str, reason: Option<&str>, message: Option<String>, now: &str) {
    let mut conditions: Vec<Value> =
        pod.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let previous = conditions.iter().position(|c| c.get("type").and_then(Value::as_str) == Some(kind));
    let transition = previous
        .and_then(|i| conditions.get(i))
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    let mut condition =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": transition});
    if let Some(reason) = reason {
        condition["reason"] = json!(reason);
    }
    if let Some(message) = message {
        condition["message"] = json!(message);
    }
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
    let rank = |c: &Value| {
        let kind = c.get("type").and_then(Value::as_str).unwrap_or_default();
        CONDITION_ORDER.iter().position(|k| *k == kind).unwrap_or(CONDITION_ORDER.len())
    };
    conditions.sort_by_key(rank);
    with_status(pod, |s| s.insert("conditions".into(), Value::Array(conditions)));
}

/// The scheduler binds the pod to the node.
pub(crate) fn schedule(pod: &mut Value, now: DateTime<Utc>) {
    pod["spec"]["nodeName"] = json!(NODE_NAME);
    set_condition(pod, "PodScheduled", "True", None, None, &timestamp(now));
}

fn sorted_names(pod: &Value) -> Vec<String> {
    let mut names = container_names(pod);
    names.sort();
    names
}

/// The kubelet's first status: admitted, containers being created.
pub(crate) fn kubelet_accepts(pod: &mut Value, now: DateTime<Utc>) {
    let now_s = timestamp(now);
    let names = sorted_names(pod);
    let unready = Some(format!("containers with unready status: [{}]", names.join(" ")));
    set_condition(pod, "PodReadyToStartContainers", "False", None, None, &now_s);
    set_condition(pod, "Initialized", "True", None, None, &now_s);
    set_condition(pod, "Ready", "False", Some("ContainersNotReady"), unready.clone(), &now_s);
    set_condition(pod, "ContainersReady", "False", Some("ContainersNotReady"), unready, &now_s);
    let statuses: Vec<Value> = names
        .iter()
        .map(|name| {
            let image = container_spec(pod, name).and_then(|c| c.get("image").cloned()).unwrap_or_else(|| json!(""));
            json!({"name": name, "state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {},
                   "ready": false, "restartCount": 0, "image": image, "imageID": "", "started": false})
        })
        .collect();
    with_status(pod, |status| {
        status.insert("hostIP".into(), json!(HOST_IP));
        status.insert("hostIPs".into(), json!([{"ip": HOST_IP}]));
        status.insert("startTime".into(), json!(now_s));
        status.insert("containerStatuses".into(), Value::Array(statuses));
    });
}

fn running_status(pod: &Value, name: &str, started: &str, restarts: u64, last_state: Value) -> Value {
    let image = container_spec(pod, name).and_then(|c| c.get("image").and_then(Value::as_str).map(str::to_owned));
    let image = image.unwrap_or_default();
    json!({"name": name, "state": {"running": {"startedAt": started}}, "lastState": last_state, "ready": true,
           "restartCount": restarts, "image": normalize_image(&image), "imageID": image_id(&image),
           "containerID": container_id(), "started": true})
}

/// The kubelet started every container: the pod is Running and Ready.
pub(crate) fn start_containers(pod: &mut Value, now: DateTime<Utc>, pod_ip: &str) {
    let now_s = timestamp(now);
    let statuses: Vec<Value> = sorted_names(pod).iter().map(|n| running_status(pod, n, &now_s, 0, json!({}))).collect();
    for kind in ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"] {
        set_condition(pod, kind, "True", None, None, &now_s);
    }
    with_status(pod, |status| {
        status.insert("phase".into(), json!("Running"));
        status.insert("podIP".into(), json!(pod_ip));
        status.insert("podIPs".into(), json!([{"ip": pod_ip}]));
        status.insert("containerStatuses".into(), Value::Array(statuses));
    });
}

fn terminated_state(previous: &Value, exit_code: i64, reason: &str, now: &str) -> Value {
    let started = previous.pointer("/state/running/startedAt").cloned().unwrap_or_else(|| json!(now));
    let mut terminated = json!({"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": now});
    if let Some(id) = previous.get("containerID") {
        terminated["containerID"] = id.clone();
    }
    json!({"terminated": terminated})
}

/// What an OOM kill did to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OomOutcome {
    /// The container was restarted (`restartPolicy` Always or OnFailure).
    Restarted,
    /// The container stays dead (`restartPolicy: Never`).
    Terminated,
}

/// The kernel OOM-killed container `name`: restart it or leave it terminated per `restartPolicy`.
pub(crate) fn oom_kill(pod: &mut Value, name: &str, now: DateTime<Utc>) -> OomOutcome {
    let now_s = timestamp(now);
    let restart = pod.pointer("/spec/restartPolicy").and_then(Value::as_str) != Some("Never");
    let previous = container_status(pod, name).unwrap_or_else(|| json!({}));
    let terminated = terminated_state(&previous, 137, "OOMKilled", &now_s);
    let updated = if restart {
        let restarts = previous.get("restartCount").and_then(Value::as_u64).unwrap_or(0) + 1;
        running_status(pod, name, &now_s, restarts, terminated)
    } else {
        let mut dead = previous.clone();
        dead["state"] = terminated;
        dead["ready"] = json!(false);
        dead["started"] = json!(false);
        dead
    };
    replace_container_status(pod, name, updated);
    if restart {
        return OomOutcome::Restarted;
    }
    let all_done = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().all(|c| c.pointer("/state/terminated").is_some()));
    let reason = if all_done { "PodFailed" } else { "ContainersNotReady" };
    let message = (!all_done).then(|| format!("containers with unready status: [{name}]"));
    set_condition(pod, "Ready", "False", Some(reason), message.clone(), &now_s);
    set_condition(pod, "ContainersReady", "False", Some(reason), message, &now_s);
    if all_done {
        with_status(pod, |s| s.insert("phase".into(), json!("Failed")));
    }
    OomOutcome::Terminated
}

fn replace_container_status(pod: &mut Value, name: &str, updated: Value) {
    if let Some(statuses) = pod.pointer_mut("/status/containerStatuses").and_then(Value::as_array_mut) {
        for status in statuses.iter_mut() {
            if status.get("name").and_then(Value::as_str) == Some(name) {
                *status = updated.clone();
            }
        }
    }
}

/// What the kubelet's eviction manager tells an evicted pod (`nodeLowMessageFmt`).
pub(crate) fn eviction_message(resource: &str) -> String {
    format!("The node was low on resource: {resource}. ")
}

/// The kubelet evicted the pod under node pressure: every container killed, the pod `Failed`
/// with reason `Evicted` whatever its restart policy, and a `DisruptionTarget` condition.
pub(crate) fn evict(pod: &mut Value, now: DateTime<Utc>, message: &str) {
    let now_s = timestamp(now);
    let statuses: Vec<Value> = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut s| {
            if s.pointer("/state/terminated").is_none() {
                let mut state = terminated_state(&s, 137, "ContainerStatusUnknown", &now_s);
                state["terminated"]["message"] =
                    json!("The container could not be located when the pod was terminated");
                s["state"] = state;
            }
            s["ready"] = json!(false);
            s["started"] = json!(false);
            s
        })
        .collect();
    with_status(pod, |s| {
        s.insert("phase".into(), json!("Failed"));
        s.insert("reason".into(), json!("Evicted"));
        s.insert("message".into(), json!(message));
        s.insert("containerStatuses".into(), Value::Array(statuses));
    });
    set_condition(pod, "DisruptionTarget", "True", Some("TerminationByKubelet"), Some(message.to_owned()), &now_s);
    set_condition(pod, "Ready", "False", Some("PodFailed"), None, &now_s);
    set_condition(pod, "ContainersReady", "False", Some("PodFailed"), None, &now_s);
}

/// A graceful delete began: the kubelet has `grace_seconds` to stop the containers.
pub(crate) fn mark_deleting(pod: &mut Value, now: DateTime<Utc>, grace_seconds: i64) {
    let deadline = now + chrono::Duration::seconds(grace_seconds);
    pod["metadata"]["deletionTimestamp"] = json!(timestamp(deadline));
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace_seconds);
}

/// The kubelet killed every container; the last state before the object is removed.
pub(crate) fn stop_containers(pod: &mut Value, now: DateTime<Utc>) {
    let now_s = timestamp(now);
    let statuses: Vec<Value> = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut s| {
            if s.pointer("/state/running").is_some() {
                s["state"] = terminated_state(&s, 137, "Error", &now_s);
            }
            s["ready"] = json!(false);
            s["started"] = json!(false);
            s
        })
        .collect();
    if !statuses.is_empty() {
        with_status(pod, |s| s.insert("containerStatuses".into(), Value::Array(statuses)));
        set_condition(pod, "Ready", "False", Some("PodCompleted"), None, &now_s);
        set_condition(pod, "ContainersReady", "False", Some("PodCompleted"), None, &now_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created() -> Value {
        let body = json!({"metadata": {"name": "w1", "labels": {"app": "rdev"}},
                          "spec": {"containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}});
        admit(body, "default", "uid-1", Utc::now()).unwrap()
    }

    #[test]
    fn create_fills_the_documented_defaults() {
        let pod = created();
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["spec"]["containers"][0]["resources"], json!({}));
        assert_eq!(pod["status"], json!({"phase": "Pending", "qosClass": "BestEffort"}));
    }

    #[test]
    fn missing_containers_and_images_are_invalid() {
        let no_containers = admit(json!({"metadata": {"name": "a"}, "spec": {}}), "d", "u", Utc::now()).unwrap_err();
        assert_eq!(no_containers.code(), 422);
        let no_image = json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c"}]}});
        let error = admit(no_image, "d", "u", Utc::now()).unwrap_err();
        assert_eq!(error.to_status()["message"], "Pod \"a\" is invalid: spec.containers[0].image: Required value");
        let wrong_ns = json!({"metadata": {"name": "a", "namespace": "other"}, "spec": {}});
        assert_eq!(admit(wrong_ns, "d", "u", Utc::now()).unwrap_err().code(), 400);
    }

    #[test]
    fn generate_name_gets_a_suffix() {
        let body = json!({"metadata": {"generateName": "w-"}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let pod = admit(body, "d", "u", Utc::now()).unwrap();
        let name = meta_str(&pod, "name").unwrap();
        assert!(name.starts_with("w-") && name.len() == 7, "{name}");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
    }

    #[test]
    fn qos_classes() {
        let with = |resources: Value| {
            let body = json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "image": "x:1", "resources": resources}]}});
            admit(body, "d", "u", Utc::now()).unwrap()["status"]["qosClass"].clone()
        };
        assert_eq!(with(json!({"limits": {"cpu": "1", "memory": "1Gi"}})), "Guaranteed");
        assert_eq!(with(json!({"requests": {"cpu": "100m"}})), "Burstable");
    }

    #[test]
    fn images_are_normalized_like_containerd() {
        assert_eq!(normalize_image("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize_image("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize_image("org/app:2"), "docker.io/org/app:2");
        assert_eq!(normalize_image("ghcr.io/org/app:2"), "ghcr.io/org/app:2");
        assert_eq!(normalize_image("localhost:5000/app"), "localhost:5000/app:latest");
        assert!(image_id("busybox:1.36").starts_with("docker.io/library/busybox@sha256:"));
    }

    #[test]
    fn lifecycle_reaches_running_with_ordered_conditions() {
        let mut pod = created();
        let now = Utc::now();
        schedule(&mut pod, now);
        kubelet_accepts(&mut pod, now);
        assert_eq!(pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "ContainerCreating");
        assert_eq!(pod["status"]["conditions"][2]["reason"], "ContainersNotReady");
        start_containers(&mut pod, now, "10.244.0.5");
        let kinds: Vec<&str> =
            pod["status"]["conditions"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, CONDITION_ORDER[1..].to_vec());
        assert!(container_running(&pod, "main"));
        assert_eq!(phase(&pod), "Running");
        assert!(pod["status"]["conditions"][2].get("reason").is_none());
    }

    #[test]
    fn an_evicted_pod_fails_whatever_its_restart_policy() {
        let mut pod = created();
        let now = Utc::now();
        schedule(&mut pod, now);
        kubelet_accepts(&mut pod, now);
        start_containers(&mut pod, now, "10.244.0.5");
        evict(&mut pod, now, &eviction_message("memory"));
        assert_eq!(phase(&pod), "Failed");
        assert_eq!(pod["status"]["reason"], "Evicted");
        assert_eq!(pod["status"]["message"], "The node was low on resource: memory. ");
        assert_eq!(pod["status"]["conditions"][0]["type"], "DisruptionTarget");
        assert_eq!(container_status(&pod, "main").unwrap()["state"]["terminated"]["exitCode"], 137);
        assert!(!container_running(&pod, "main"));
    }

    #[test]
    fn oom_restarts_or_fails_per_restart_policy() {
        let mut pod = created();
        let now = Utc::now();
        schedule(&mut pod, now);
        kubelet_accepts(&mut pod, now);
        start_containers(&mut pod, now, "10.244.0.5");
        let mut never = pod.clone();
        never["spec"]["restartPolicy"] = json!("Never");
        assert_eq!(oom_kill(&mut pod, "main", now), OomOutcome::Restarted);
        let status = container_status(&pod, "main").unwrap();
        assert_eq!(status["restartCount"], 1);
        assert_eq!(status["lastState"]["terminated"]["reason"], "OOMKilled");
        assert_eq!(phase(&pod), "Running");
        assert_eq!(oom_kill(&mut never, "main", now), OomOutcome::Terminated);
        assert_eq!(phase(&never), "Failed");
        assert_eq!(container_status(&never, "main").unwrap()["state"]["terminated"]["exitCode"], 137);
    }
}
