//! The events rdev-api emits and their `data`, built in one place so that every store writes
//! byte-for-byte the same payloads.

use serde_json::json;
use sha2::{Digest, Sha256};

use super::model::OutboxEvent;
use super::values::{EventPayload, EventType};
use super::{EventId, WebhookId};
use crate::command::{Command, CommandStatus};
use crate::pod::{PodChange, PodPhase, PodStatus};
use crate::project::ProjectName;
use crate::{DomainResult, Timestamp};

/// Longest `error` text copied into a command event.
const MAX_ERROR_CHARS: usize = 4096;

fn rfc3339(t: Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The event type of a command that has just entered `status`.
pub const fn command_event_type(status: CommandStatus) -> EventType {
    match status {
        CommandStatus::Queued => EventType::CommandQueued,
        CommandStatus::Running => EventType::CommandStarted,
        CommandStatus::Succeeded => EventType::CommandSucceeded,
        CommandStatus::Failed => EventType::CommandFailed,
        CommandStatus::TimedOut => EventType::CommandTimedOut,
        CommandStatus::Cancelled => EventType::CommandCancelled,
        CommandStatus::Lost => EventType::CommandLost,
    }
}

/// The event of `command` entering its current status at `at`. `data` is the command as
/// clients read it, without its argv, env and stdin (which can be large or sensitive).
pub fn command_event(command: &Command, at: Timestamp) -> OutboxEvent {
    let event_type = command_event_type(command.status);
    let data = json!({
        "id": command.id.to_string(),
        "project": command.project.as_str(),
        "status": command.status.as_str(),
        "exit_code": command.exit_code,
        "termination_reason": command.termination_reason.map(|r| r.as_str()),
        "error": command.error.as_ref().map(|e| e.chars().take(MAX_ERROR_CHARS).collect::<String>()),
        "priority": command.priority.as_str(),
        "queued_at": rfc3339(command.queued_at),
        "started_at": command.started_at.map(rfc3339),
        "finished_at": command.finished_at.map(rfc3339),
    });
    OutboxEvent {
        id: EventId::generate(),
        event_type,
        project: Some(command.project.clone()),
        target: None,
        created_at: at,
        // A bounded set of short fields is far below the payload limit.
        payload: EventPayload::new(event_type, at, data)
            .unwrap_or_else(|_| unreachable!("command event data is a few hundred bytes")),
    }
}

/// The event type of a pod in `status`, when that state is an event: ready, failed, or
/// stopped. `None` for in-between states (pending, stopping, running but not ready).
pub const fn pod_event_type(status: &PodStatus) -> Option<EventType> {
    match status.phase {
        PodPhase::Running if status.ready => Some(EventType::PodReady),
        PodPhase::Failed => Some(EventType::PodFailed),
        PodPhase::Stopped => Some(EventType::PodStopped),
        _ => None,
    }
}

/// The event of a project's pod reaching `status`, when that is an event (see `pod_event_type`).
pub fn pod_event(project: &ProjectName, status: &PodStatus, at: Timestamp) -> Option<OutboxEvent> {
    let event_type = pod_event_type(status)?;
    let data = json!({
        "project": project.as_str(),
        "phase": status.phase.as_str(),
        "ready": status.ready,
        "pod_name": status.pod_name,
        "started_at": status.started_at.map(rfc3339),
        "reason": status.reason.as_ref().map(|r| r.chars().take(MAX_ERROR_CHARS).collect::<String>()),
    });
    let payload = EventPayload::new(event_type, at, data).ok()?;
    Some(OutboxEvent {
        id: EventId::generate(),
        event_type,
        project: Some(project.clone()),
        target: None,
        created_at: at,
        payload,
    })
}

/// The event of a reported pod change. Its id is derived from the change's project and
/// occurrence, so the same change reported twice (by two leaders in turn) is the same outbox
/// event, which the store refuses to hold twice.
pub fn pod_change_event(change: &PodChange, at: Timestamp) -> Option<OutboxEvent> {
    let mut event = pod_event(&change.project, &change.status, at)?;
    let digest = Sha256::new()
        .chain_update(b"rdev-api pod change\0")
        .chain_update(change.project.as_str().as_bytes())
        .chain_update(b"\0")
        .chain_update(change.occurrence.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    event.id = EventId::from_uuid(uuid::Builder::from_custom_bytes(bytes).into_uuid());
    Some(event)
}

/// A `ping` for one subscription only (`POST /v1/webhooks/{id}/test`).
pub fn ping_event(webhook: WebhookId, at: Timestamp) -> DomainResult<OutboxEvent> {
    let data = json!({ "webhook_id": webhook.to_string(), "message": "ping from rdev-api" });
    Ok(OutboxEvent {
        id: EventId::generate(),
        event_type: EventType::Ping,
        project: None,
        target: Some(webhook),
        created_at: at,
        payload: EventPayload::new(EventType::Ping, at, data)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_status_has_its_own_event_type() {
        let types: std::collections::BTreeSet<_> = CommandStatus::ALL.iter().map(|s| command_event_type(*s)).collect();
        assert_eq!(types.len(), CommandStatus::ALL.len());
        assert_eq!(command_event_type(CommandStatus::Running), EventType::CommandStarted);
    }

    #[test]
    fn pods_emit_only_on_ready_failed_and_stopped() {
        let project = ProjectName::parse("web").unwrap();
        let at = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let mut status = PodStatus::stopped();
        assert_eq!(pod_event(&project, &status, at).map(|e| e.event_type), Some(EventType::PodStopped));
        status.phase = PodPhase::Running;
        assert!(pod_event(&project, &status, at).is_none(), "running but not ready is no event");
        status.ready = true;
        let ready = pod_event(&project, &status, at).unwrap();
        assert_eq!(ready.event_type, EventType::PodReady);
        let body: serde_json::Value = serde_json::from_str(ready.payload.as_str()).unwrap();
        assert_eq!(body["data"]["project"], "web");
        status.phase = PodPhase::Pending;
        assert!(pod_event(&project, &status, at).is_none());
    }

    #[test]
    fn a_pod_change_has_the_same_event_id_whoever_reports_it() {
        let project = ProjectName::parse("web").unwrap();
        let status = PodStatus { phase: PodPhase::Failed, reason: Some("Evicted".into()), ..PodStatus::stopped() };
        let change = PodChange { project, status, occurrence: "uid-1/failed".into() };
        let at = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let first = pod_change_event(&change, at).unwrap();
        let again = pod_change_event(&change, at + chrono::TimeDelta::seconds(5)).unwrap();
        assert_eq!(first.id, again.id);
        assert_eq!(first.event_type, EventType::PodFailed);
        let other = PodChange { occurrence: "uid-2/failed".into(), ..change.clone() };
        assert_ne!(pod_change_event(&other, at).unwrap().id, first.id);
        let pending = PodChange { status: PodStatus { phase: PodPhase::Pending, ..PodStatus::stopped() }, ..change };
        assert!(pod_change_event(&pending, at).is_none(), "not an event");
    }

    #[test]
    fn pings_are_aimed_at_one_subscription() {
        let id = WebhookId::generate();
        let at = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let ping = ping_event(id, at).unwrap();
        assert_eq!(ping.target, Some(id));
        assert_eq!(ping.project, None);
        let body: serde_json::Value = serde_json::from_str(ping.payload.as_str()).unwrap();
        assert_eq!(body["type"], "ping");
        assert_eq!(body["timestamp"], "2026-01-01T00:00:00.000000Z");
    }
}
