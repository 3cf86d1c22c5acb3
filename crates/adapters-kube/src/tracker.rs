//! What the pod watch has reported per project and what it still has to: the pure part of the
//! watch, fed with watcher events, compared state by state, and saved with the lease.
//!
//! An occurrence names one state of one pod the same way for every observer:
//! `<uid>/ready/<restarts>`, `<uid>/failed/<restarts>`, `<uid>/restart/<restarts>` (the
//! container ended and was restarted: an OOM kill or a crash under `restartPolicy: Always`) and
//! `<uid>/stopped`.

use std::collections::BTreeMap;

use domain::pod::{PodChange, PodPhase, PodStatus};
use domain::project::ProjectName;
use domain::webhook::pod_event_type;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use serde::{Deserialize, Serialize};

use crate::manifest::PROJECT_LABEL;
use crate::status::{container_status, pod_status, restart_count};

/// The last state reported for one project's pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reported {
    /// The pod's uid.
    pub uid: String,
    /// Its container's restart count when last reported.
    pub restarts: i32,
    /// The last occurrence reported; empty when the pod was seen but nothing was reported.
    pub occurrence: String,
}

impl Reported {
    fn stopped(&self) -> bool {
        self.occurrence.ends_with("/stopped")
    }
}

/// One thing to do for a project, in order: report `change` (when there is one), then
/// remember `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// The project.
    pub project: ProjectName,
    /// The change to report, `None` for a silent bookkeeping step.
    pub change: Option<PodChange>,
    /// What counts as reported once `change` is.
    pub after: Reported,
}

/// Reported and current state of every managed pod.
#[derive(Debug)]
pub(crate) struct Tracker {
    container: String,
    reported: BTreeMap<ProjectName, Reported>,
    current: BTreeMap<ProjectName, Pod>,
    listing: Option<BTreeMap<ProjectName, Pod>>,
    /// Whether a full list arrived (before that, every pod would look gone).
    listed: bool,
    /// Take the first full list as already reported (no earlier holder left its states).
    adopt: bool,
    /// A list was just adopted: save the states with the lease now, before anything else
    /// happens, so a next leader does not adopt a later list and miss what changed in between.
    adopted: bool,
}

fn project_of(pod: &Pod) -> Option<ProjectName> {
    let label = pod.metadata.labels.as_ref()?.get(PROJECT_LABEL)?;
    ProjectName::parse(label).ok()
}

impl Tracker {
    /// A tracker continuing from `inherited` (the previous holder's saved states); without
    /// them, the first full list counts as reported.
    pub(crate) fn new(container: &str, inherited: Option<&str>) -> Self {
        let reported = inherited.and_then(|text| match serde_json::from_str::<BTreeMap<String, Reported>>(text) {
            Ok(map) => Some(map.into_iter().filter_map(|(p, r)| Some((ProjectName::parse(&p).ok()?, r))).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "the lease's reported pod states are unreadable; starting afresh");
                None
            }
        });
        Self {
            container: container.to_owned(),
            adopt: reported.is_none(),
            reported: reported.unwrap_or_default(),
            current: BTreeMap::new(),
            listing: None,
            listed: false,
            adopted: false,
        }
    }

    /// The reported states, as saved with the lease.
    pub(crate) fn snapshot(&self) -> String {
        let map: BTreeMap<&str, &Reported> = self.reported.iter().map(|(p, r)| (p.as_str(), r)).collect();
        serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Applies one watcher event; returns the projects it may have changed (every project after
    /// a full list).
    pub(crate) fn apply(&mut self, event: Event<Pod>) -> Vec<ProjectName> {
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(pod) => {
                if let (Some(listing), Some(project)) = (self.listing.as_mut(), project_of(&pod)) {
                    listing.insert(project, pod);
                }
                Vec::new()
            }
            Event::InitDone => {
                self.current = self.listing.take().unwrap_or_default();
                self.listed = true;
                let projects: Vec<ProjectName> = self.reported.keys().chain(self.current.keys()).cloned().collect();
                if std::mem::take(&mut self.adopt) {
                    for project in &projects {
                        for step in self.steps_for(project) {
                            self.remember(step.project, step.after);
                        }
                    }
                    self.adopted = true;
                    return Vec::new();
                }
                projects
            }
            Event::Apply(pod) => {
                let Some(project) = project_of(&pod) else { return Vec::new() };
                self.current.insert(project.clone(), pod);
                vec![project]
            }
            Event::Delete(pod) => {
                let Some(project) = project_of(&pod) else { return Vec::new() };
                let uid = pod.metadata.uid.clone();
                if self.current.get(&project).is_some_and(|p| p.metadata.uid == uid) {
                    self.current.remove(&project);
                }
                // A pod deleted unseen (between lists) is still one that existed.
                if self.reported.get(&project).is_none_or(|r| Some(&r.uid) != uid.as_ref()) {
                    if let Some(uid) = uid {
                        self.pending_gone(&project, uid);
                    }
                }
                vec![project]
            }
        }
    }

    /// Marks a pod nobody reported as seen, so its deletion is reported as `stopped`.
    fn pending_gone(&mut self, project: &ProjectName, uid: String) {
        if self.reported.get(project).is_none_or(Reported::stopped) {
            self.reported.insert(project.clone(), Reported { uid, restarts: 0, occurrence: String::new() });
        }
    }

    /// Whether a list was adopted since the last call (its states are to be saved at once).
    pub(crate) fn take_adopted(&mut self) -> bool {
        std::mem::take(&mut self.adopted)
    }

    /// Records `after` as reported (a reported stop forgets the project).
    pub(crate) fn remember(&mut self, project: ProjectName, after: Reported) {
        if after.stopped() && !self.current.contains_key(&project) {
            self.reported.remove(&project);
        } else {
            self.reported.insert(project, after);
        }
    }

    /// Everything still to do for `projects` (for every known project when empty), in order.
    pub(crate) fn pending(&self, projects: &[ProjectName]) -> Vec<Step> {
        // Until a full list is in (or while a re-list is), the current state is incomplete.
        if !self.listed || self.listing.is_some() {
            return Vec::new();
        }
        let all: Vec<ProjectName>;
        let projects = if projects.is_empty() {
            all = self.reported.keys().chain(self.current.keys()).cloned().collect();
            &all
        } else {
            projects
        };
        let mut steps = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for project in projects {
            if seen.insert(project.clone()) {
                steps.extend(self.steps_for(project));
            }
        }
        steps
    }

    fn steps_for(&self, project: &ProjectName) -> Vec<Step> {
        let reported = self.reported.get(project);
        let mut steps = Vec::new();
        let step = |change: Option<PodChange>, after: &Reported| Step {
            project: project.clone(),
            change,
            after: after.clone(),
        };
        let stop = |r: &Reported| {
            let after = Reported { occurrence: format!("{}/stopped", r.uid), ..r.clone() };
            let change = PodChange {
                project: project.clone(),
                status: PodStatus::stopped(),
                occurrence: after.occurrence.clone(),
            };
            (change, after)
        };
        let Some(pod) = self.current.get(project) else {
            if let Some(r) = reported.filter(|r| !r.stopped()) {
                let (change, after) = stop(r);
                steps.push(step(Some(change), &after));
            }
            return steps;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut after = match reported {
            Some(r) if r.uid == uid => r.clone(),
            Some(r) => {
                if !r.stopped() {
                    let (change, gone) = stop(r);
                    steps.push(step(Some(change), &gone));
                }
                Reported { uid: uid.clone(), ..Reported::default() }
            }
            None => Reported { uid: uid.clone(), ..Reported::default() },
        };
        let restarts = restart_count(pod, &self.container);
        let status = pod_status(pod, &self.container);
        if restarts > after.restarts {
            let ended = container_status(pod, &self.container)
                .and_then(|c| c.last_state.as_ref())
                .and_then(|s| s.terminated.as_ref());
            after.restarts = restarts;
            if let Some(ended) = ended {
                let reason = ended.reason.clone().unwrap_or_else(|| format!("exited with code {}", ended.exit_code));
                after.occurrence = format!("{uid}/restart/{restarts}");
                let failed = PodStatus {
                    phase: PodPhase::Failed,
                    ready: false,
                    pod_name: status.pod_name.clone(),
                    started_at: None,
                    reason: Some(reason),
                };
                let change =
                    PodChange { project: project.clone(), status: failed, occurrence: after.occurrence.clone() };
                steps.push(step(Some(change), &after));
            }
        }
        let occurrence = pod_event_type(&status).map(|_| match status.phase {
            PodPhase::Failed => format!("{uid}/failed/{restarts}"),
            _ => format!("{uid}/ready/{restarts}"),
        });
        match occurrence {
            Some(occurrence) if occurrence != after.occurrence => {
                after.occurrence = occurrence.clone();
                steps.push(step(Some(PodChange { project: project.clone(), status, occurrence }), &after));
            }
            _ if reported != Some(&after) && steps.last().is_none_or(|s| s.after != after) => {
                steps.push(step(None, &after));
            }
            _ => {}
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn recorded(name: &str) -> Pod {
        let path = format!("{}/testdata/pods/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let mut pod: Pod = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        pod.metadata.labels = Some([(PROJECT_LABEL.to_owned(), "demo".to_owned())].into());
        pod
    }

    fn listed(tracker: &mut Tracker, pods: Vec<Pod>) -> Vec<ProjectName> {
        tracker.apply(Event::Init);
        for pod in pods {
            tracker.apply(Event::InitApply(pod));
        }
        tracker.apply(Event::InitDone)
    }

    /// Reports every pending change (as a sink that always succeeds would) and returns them.
    fn report(tracker: &mut Tracker, projects: &[ProjectName]) -> Vec<PodChange> {
        let steps = tracker.pending(projects);
        let mut changes = Vec::new();
        for step in steps {
            changes.extend(step.change);
            tracker.remember(step.project, step.after);
        }
        changes
    }

    #[test]
    fn each_state_is_reported_once_and_a_relist_repeats_nothing() {
        let mut tracker = Tracker::new("main", Some("{}"));
        let projects = listed(&mut tracker, vec![recorded("running-ready")]);
        let changes = report(&mut tracker, &projects);
        assert_eq!(changes.len(), 1);
        assert!(changes[0].status.ready);
        let projects = listed(&mut tracker, vec![recorded("running-ready")]);
        assert!(report(&mut tracker, &projects).is_empty(), "a re-list reports nothing new");
        let projects = tracker.apply(Event::Apply(recorded("evicted")));
        let changes = report(&mut tracker, &projects);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].status.reason.as_deref(), Some("Evicted: The node was low on resource: memory."));
        let projects = tracker.apply(Event::Delete(recorded("evicted")));
        let changes = report(&mut tracker, &projects);
        assert_eq!(changes.iter().map(|c| c.status.phase).collect::<Vec<_>>(), [PodPhase::Stopped]);
        assert_eq!(tracker.snapshot(), "{}", "a reported stop forgets the project");
    }

    #[test]
    fn a_restart_after_an_oom_kill_is_a_failure_then_ready_again() {
        let mut tracker = Tracker::new("main", Some("{}"));
        let mut before = recorded("oom-restarted");
        before.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0].restart_count = 0;
        let projects = listed(&mut tracker, vec![before]);
        assert_eq!(report(&mut tracker, &projects).len(), 1);
        let projects = tracker.apply(Event::Apply(recorded("oom-restarted")));
        let changes = report(&mut tracker, &projects);
        let seen: Vec<(PodPhase, Option<&str>)> =
            changes.iter().map(|c| (c.status.phase, c.status.reason.as_deref())).collect();
        assert_eq!(seen, [(PodPhase::Failed, Some("OOMKilled")), (PodPhase::Running, None)]);
    }

    #[test]
    fn a_new_holder_continues_from_the_saved_states() {
        let mut first = Tracker::new("main", Some("{}"));
        let projects = listed(&mut first, vec![recorded("running-ready")]);
        report(&mut first, &projects);
        let saved = first.snapshot();
        let mut next = Tracker::new("main", Some(&saved));
        let projects = listed(&mut next, vec![recorded("running-ready")]);
        assert!(report(&mut next, &projects).is_empty(), "the ready state was reported before");
        let mut after_gap = Tracker::new("main", Some(&saved));
        let projects = listed(&mut after_gap, Vec::new());
        let changes = report(&mut after_gap, &projects);
        assert_eq!(changes.len(), 1, "the pod went while nobody led");
        assert_eq!(changes[0].occurrence, "0b8f4d3e-8c1a-4c55-9d1e-2f3a4b5c6d7e/stopped");
    }

    #[test]
    fn without_saved_states_the_first_list_counts_as_reported() {
        let mut tracker = Tracker::new("main", None);
        let projects = listed(&mut tracker, vec![recorded("running-ready")]);
        assert!(projects.is_empty() && tracker.pending(&[]).is_empty());
        assert!(tracker.take_adopted() && !tracker.take_adopted(), "adopted once, to be saved at once");
        let projects = tracker.apply(Event::Apply(recorded("evicted")));
        assert_eq!(report(&mut tracker, &projects).len(), 1);
        let mut broken = Tracker::new("main", Some("not json"));
        listed(&mut broken, vec![recorded("running-ready")]);
        assert!(broken.pending(&[]).is_empty());
    }

    #[test]
    fn a_pod_that_never_got_ready_is_still_reported_stopped() {
        let mut tracker = Tracker::new("main", Some("{}"));
        let projects = listed(&mut tracker, vec![recorded("pending-creating")]);
        assert!(report(&mut tracker, &projects).is_empty());
        let projects = tracker.apply(Event::Delete(recorded("pending-creating")));
        let changes = report(&mut tracker, &projects);
        assert_eq!(changes.iter().map(|c| c.status.phase).collect::<Vec<_>>(), [PodPhase::Stopped]);
    }
}
