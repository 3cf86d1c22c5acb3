//! Server-side printing: the `Table` kubectl asks for, with the pod columns of the real printer.

use chrono::{DateTime, Utc};
use http::{header, HeaderMap};
use serde_json::{json, Value};

/// Whether the client asked for `as=Table` (kubectl `get`).
pub(crate) fn wanted(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains("as=Table"))
}

fn column(name: &str, format: &str, description: &str, priority: u8) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": description, "priority": priority})
}

/// A `meta.k8s.io/v1` Table of pods.
pub(crate) fn pods(resource_version: &str, pods: &[Value], now: DateTime<Utc>) -> Value {
    let columns = vec![
        column("Name", "name", "Name must be unique within a namespace.", 0),
        column("Ready", "", "The aggregate readiness state of this pod for accepting traffic.", 0),
        column("Status", "", "The aggregate status of the containers in this pod.", 0),
        column("Restarts", "", "The number of times the containers in this pod have been restarted.", 0),
        column(
            "Age",
            "",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
            0,
        ),
        column("IP", "", "IP address allocated to the pod.", 1),
        column("Node", "", "NodeName indicates in which node this pod is scheduled.", 1),
        column("Nominated Node", "", "nominatedNodeName is set only when this pod preempts other pods on the node.", 1),
        column("Readiness Gates", "", "If specified, all readiness gates will be evaluated for pod readiness.", 1),
    ];
    let rows: Vec<Value> = pods.iter().map(|p| row(p, now)).collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
           "columnDefinitions": columns, "rows": rows})
}

fn row(pod: &Value, now: DateTime<Utc>) -> Value {
    let statuses: Vec<Value> =
        pod.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
    let total = pod.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
    let ready = statuses.iter().filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true)).count();
    let restarts: u64 = statuses.iter().filter_map(|s| s.get("restartCount").and_then(Value::as_u64)).sum();
    let text =
        |pointer: &str| pod.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("<none>");
    let age = pod
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(|| "<unknown>".to_owned(), |t| human_duration(now.signed_duration_since(t)));
    json!({
        "cells": [text("/metadata/name"), format!("{ready}/{total}"), display_status(pod, &statuses),
                  restarts.to_string(), age, text("/status/podIP"), text("/spec/nodeName"),
                  text("/status/nominatedNodeName"), "<none>"],
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": pod.get("metadata").cloned().unwrap_or_else(|| json!({}))},
    })
}

/// The STATUS column: a container's waiting or terminated reason beats the phase;
/// a pod being deleted shows `Terminating`.
fn display_status(pod: &Value, statuses: &[Value]) -> String {
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".to_owned();
    }
    let mut reason =
        pod.pointer("/status/reason").and_then(Value::as_str).unwrap_or_else(|| crate::pod::phase(pod)).to_owned();
    for status in statuses {
        let waiting = status.pointer("/state/waiting/reason").and_then(Value::as_str);
        let terminated = status.pointer("/state/terminated/reason").and_then(Value::as_str);
        if let Some(r) = waiting.or(terminated).filter(|r| !r.is_empty()) {
            reason = r.to_owned();
        }
    }
    reason
}

/// kubectl's `HumanDuration` (`5s`, `3m20s`, `2d4h`, …).
fn human_duration(d: chrono::Duration) -> String {
    let seconds = d.num_seconds();
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{h}h", hours / 24) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    let years = hours / 24 / 365;
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 { format!("{years}y") } else { format!("{years}y{days}d") };
    }
    format!("{years}y")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_kubectl() {
        let d = chrono::Duration::seconds;
        assert_eq!(human_duration(d(5)), "5s");
        assert_eq!(human_duration(d(200)), "3m20s");
        assert_eq!(human_duration(d(600)), "10m");
        assert_eq!(human_duration(d(3 * 3600 + 60)), "3h1m");
        assert_eq!(human_duration(d(52 * 3600)), "2d4h");
    }

    #[test]
    fn running_pod_row() {
        let pod = json!({"metadata": {"name": "w1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "main"}], "nodeName": "n"},
            "status": {"phase": "Running", "podIP": "10.244.0.5",
                       "containerStatuses": [{"name": "main", "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:05:00Z").unwrap().with_timezone(&Utc);
        let table = pods("7", &[pod], now);
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["w1", "1/1", "Running", "0", "5m", "10.244.0.5", "n", "<none>", "<none>"])
        );
    }
}
