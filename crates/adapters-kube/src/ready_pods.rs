//! What the backend last learned about its ready pods, so that a command in a pod known to be
//! ready need not read the pod first (one API round trip per run).
//!
//! Every pod read the backend makes (the executor's own, `status`, `wait_ready`, the poll after
//! a command) and, when the backend feeds a [`crate::KubePodWatch`], every watch event updates
//! it: a ready pod is noted with its uid, anything else drops the entry. An entry is trusted
//! for [`crate::KubeConfig::pod_cache_ttl`] after it was last confirmed, and never blindly:
//! an exec that provably started nothing (refused before the upgrade, or no connection) drops it
//! and the run starts over with a read, and a command that does not end with a plain exit reads
//! the pod anyway (to tell `pod_gone`), comparing with the uid noted here unless the pod read
//! was created before the exec (then it is the pod the command ran in). So a stale entry costs
//! a retry; it never runs a command in a pod the API would refuse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::status::{pod_status, restart_count, working_dir};

/// A ready pod as it was last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownPod {
    /// Its uid: a different one later means the pod was replaced.
    pub uid: Option<String>,
    /// The container's restart count then (for telling an OOM kill during a command).
    pub restarts: i32,
    /// The container's `workingDir` (fixed for the life of the uid).
    pub working_dir: Option<String>,
}

#[derive(Debug)]
struct Entry {
    known: KnownPod,
    until: Instant,
}

/// Ready pods by name, shared by the clones of one backend (and the pod watch built from it).
#[derive(Debug, Clone)]
pub(crate) struct ReadyPods {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    container: String,
    ttl: Duration,
}

impl ReadyPods {
    /// An empty cache reading `container`; a zero `ttl` turns it off.
    pub(crate) fn new(container: &str, ttl: Duration) -> Self {
        Self { entries: Arc::default(), container: container.to_owned(), ttl }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Every update is a single insert or remove: a panic elsewhere leaves consistent data.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pod `name` if it was seen ready within the TTL.
    pub(crate) fn get(&self, name: &str) -> Option<KnownPod> {
        let mut entries = self.lock();
        match entries.get(name) {
            Some(entry) if entry.until > Instant::now() => Some(entry.known.clone()),
            Some(_) => {
                entries.remove(name);
                None
            }
            None => None,
        }
    }

    fn known(&self, pod: &Pod) -> Option<KnownPod> {
        pod_status(pod, &self.container).ready.then(|| KnownPod {
            uid: pod.metadata.uid.clone(),
            restarts: restart_count(pod, &self.container),
            working_dir: working_dir(pod, &self.container).map(str::to_owned),
        })
    }

    /// Notes what a read of `name` returned (`None`: no such pod).
    pub(crate) fn note_read(&self, name: &str, pod: Option<&Pod>) {
        if self.ttl.is_zero() {
            return;
        }
        match pod.and_then(|p| self.known(p)) {
            Some(known) => {
                let until = Instant::now() + self.ttl;
                self.lock().insert(name.to_owned(), Entry { known, until });
            }
            None => self.forget(name),
        }
    }

    /// Notes a watch event about `pod`. A watch may deliver an event older than a read made
    /// meanwhile, so it only confirms the uid already noted (or fills a gap); a different uid
    /// drops the entry and leaves the next run to read.
    pub(crate) fn note_event(&self, pod: &Pod, deleted: bool) {
        let Some(name) = pod.metadata.name.as_deref() else { return };
        let known = if deleted { None } else { self.known(pod) };
        let mut entries = self.lock();
        match known {
            Some(known) if !self.ttl.is_zero() => {
                let same = entries.get(name).is_none_or(|e| e.known.uid == known.uid);
                if same {
                    entries.insert(name.to_owned(), Entry { known, until: Instant::now() + self.ttl });
                } else {
                    entries.remove(name);
                }
            }
            _ => {
                entries.remove(name);
            }
        }
    }

    /// Drops what is known about `name` (an exec was refused, the pod was deleted or created).
    pub(crate) fn forget(&self, name: &str) {
        self.lock().remove(name);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    fn pod(uid: &str, ready: bool) -> Pod {
        let state = if ready { "True" } else { "False" };
        serde_json::from_value(json!({
            "metadata": {"name": "rdev-p", "uid": uid},
            "spec": {"containers": [{"name": "main", "workingDir": "/w"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": state}],
                "containerStatuses": [{"name": "main", "ready": ready, "restartCount": 2, "image": "i", "imageID": ""}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_ready_read_is_known_until_the_ttl_and_anything_else_forgets_it() {
        let cache = ReadyPods::new("main", Duration::from_secs(60));
        cache.note_read("rdev-p", Some(&pod("a", true)));
        let known = cache.get("rdev-p").unwrap();
        assert_eq!((known.uid.as_deref(), known.restarts, known.working_dir.as_deref()), (Some("a"), 2, Some("/w")));
        cache.note_read("rdev-p", Some(&pod("a", false)));
        assert_eq!(cache.get("rdev-p"), None);
        cache.note_read("rdev-p", Some(&pod("a", true)));
        cache.note_read("rdev-p", None);
        assert_eq!(cache.get("rdev-p"), None);

        let expired = ReadyPods::new("main", Duration::from_millis(1));
        expired.note_read("rdev-p", Some(&pod("a", true)));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(expired.get("rdev-p"), None);
        let off = ReadyPods::new("main", Duration::ZERO);
        off.note_read("rdev-p", Some(&pod("a", true)));
        assert_eq!(off.get("rdev-p"), None);
    }

    #[test]
    fn watch_events_confirm_or_drop_but_never_swap_the_uid() {
        let cache = ReadyPods::new("main", Duration::from_secs(60));
        cache.note_event(&pod("a", true), false);
        assert_eq!(cache.get("rdev-p").unwrap().uid.as_deref(), Some("a"));
        cache.note_event(&pod("b", true), false);
        assert_eq!(cache.get("rdev-p"), None, "another uid: read it again");
        cache.note_read("rdev-p", Some(&pod("b", true)));
        cache.note_event(&pod("b", false), false);
        assert_eq!(cache.get("rdev-p"), None, "not ready any more");
        cache.note_read("rdev-p", Some(&pod("b", true)));
        cache.note_event(&pod("b", true), true);
        assert_eq!(cache.get("rdev-p"), None, "deleted");
    }
}
