//! The simulated cluster's store: pods, leases and namespaces, one resourceVersion counter, a
//! bounded event history for pod watches, and the broadcast that live watches follow.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::faults::FaultSwitch;
use crate::lease;
use crate::pod;
use crate::processes::ProcessTable;
use crate::status::ApiError;
use crate::SimConfig;

/// The first resourceVersion handed out; anything older is "too old".
const FIRST_RESOURCE_VERSION: u64 = 1000;
/// Pod events kept for watches that resume from a resourceVersion.
const HISTORY_LIMIT: usize = 2048;
/// Events a slow watcher may fall behind before it is cut off (it then re-watches).
const BROADCAST_CAPACITY: usize = 4096;
/// Namespaces every cluster has.
const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-node-lease", "kube-public", "kube-system"];

/// Namespace and name of a pod.
pub(crate) type PodKey = (String, String);

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    /// The object was created.
    Added,
    /// The object changed.
    Modified,
    /// The object was removed; the event carries its last state.
    Deleted,
}

/// One change to a pod, as stored in the history and sent to watchers.
#[derive(Debug)]
pub(crate) struct Event {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// The object before the change (for selector transitions), when there was one.
    pub prev: Option<Value>,
    /// The object after the change (for DELETED, its last state with a new resourceVersion).
    pub object: Value,
}

/// Where a new watch starts.
#[derive(Debug)]
pub(crate) struct WatchStart {
    /// The resourceVersion at subscription: `initial` and `feed` together cover every change.
    pub rv: u64,
    /// Events to replay first.
    pub initial: Vec<Arc<Event>>,
    /// The live changes after `rv`.
    pub feed: broadcast::Receiver<Arc<Event>>,
}

/// A watch asked for changes the history no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired {
    /// The resourceVersion the client asked for.
    pub requested: u64,
    /// The oldest resourceVersion the server can still resume from.
    pub oldest: u64,
}

#[derive(Debug)]
struct Store {
    rv: u64,
    /// Every pod event with a resourceVersion above this is still in `history`.
    floor: u64,
    pods: BTreeMap<PodKey, Value>,
    leases: BTreeMap<PodKey, Value>,
    history: VecDeque<Arc<Event>>,
    namespaces: BTreeMap<String, Value>,
    next_ip: u32,
}

/// The directory under `pods_root` where deleted pods' directories wait for removal.
pub(crate) const TRASH: &str = ".trash";

/// Everything one simulator shares between its connections and background tasks.
#[derive(Debug)]
pub(crate) struct Sim {
    /// The configuration it was started with.
    pub config: SimConfig,
    /// `http://host:port` of the listener.
    pub base_url: String,
    store: Mutex<Store>,
    events: broadcast::Sender<Arc<Event>>,
    /// Injected faults.
    pub faults: FaultSwitch,
    /// Cancelled when the simulator shuts down.
    pub shutdown: CancellationToken,
    /// Running exec processes per pod.
    pub processes: ProcessTable,
    /// Bumped by every compaction; live watches end with a 410 when it changes.
    compactions: tokio::sync::watch::Sender<u64>,
    /// Kubernetes API requests seen (control requests excluded), for `GET /_sim/stats`.
    api_requests: AtomicU64,
    /// Reads of a single pod (`GET pods/{name}` and its `/status`), for `GET /_sim/stats`.
    pod_reads: AtomicU64,
}

impl Sim {
    /// A simulator with an empty cluster, reachable at `local`.
    pub(crate) fn new(config: SimConfig, local: SocketAddr) -> Self {
        let host = if local.ip().is_unspecified() { "127.0.0.1".to_owned() } else { local.ip().to_string() };
        let base_url = match local {
            SocketAddr::V6(_) if !local.ip().is_unspecified() => format!("http://[{host}]:{}", local.port()),
            _ => format!("http://{host}:{}", local.port()),
        };
        let mut store = Store {
            rv: FIRST_RESOURCE_VERSION,
            floor: FIRST_RESOURCE_VERSION,
            pods: BTreeMap::new(),
            leases: BTreeMap::new(),
            history: VecDeque::new(),
            namespaces: BTreeMap::new(),
            next_ip: 5,
        };
        for ns in SYSTEM_NAMESPACES {
            insert_namespace(&mut store, ns);
        }
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        Self {
            config,
            base_url,
            store: Mutex::new(store),
            events,
            faults: FaultSwitch::default(),
            shutdown: CancellationToken::new(),
            processes: ProcessTable::default(),
            compactions: tokio::sync::watch::Sender::new(0),
            api_requests: AtomicU64::new(0),
            pod_reads: AtomicU64::new(0),
        }
    }

    /// Counts one Kubernetes API request.
    pub(crate) fn count_request(&self) {
        self.api_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Kubernetes API requests seen so far.
    pub(crate) fn api_requests(&self) -> u64 {
        self.api_requests.load(Ordering::Relaxed)
    }

    /// Counts one read of a single pod.
    pub(crate) fn count_pod_read(&self) {
        self.pod_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads of a single pod seen so far.
    pub(crate) fn pod_reads(&self) -> u64 {
        self.pod_reads.load(Ordering::Relaxed)
    }

    /// Follows compactions: a live watch ends with `410 Expired` when the value changes.
    pub(crate) fn compactions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.compactions.subscribe()
    }

    /// Compacts the history as etcd does: every resourceVersion up to now becomes too old to
    /// resume from (watches from one get `410 Expired`), live watches end with that error, and
    /// a fresh list (at a new resourceVersion) is the way back. Returns that resourceVersion.
    pub(crate) fn compact(&self) -> u64 {
        let mut store = self.lock();
        store.rv += 1;
        store.floor = store.rv;
        store.history.clear();
        self.compactions.send_modify(|n| *n += 1);
        store.rv
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves consistent data (every update is one insert).
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The pod's "container filesystem".
    pub(crate) fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.config.pods_root.join(namespace).join(pod)
    }

    /// Where the logs of a pod's containers are kept (outside the pod's directory; a namespace
    /// cannot be named `.logs`, so this never collides with one).
    pub(crate) fn pod_log_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.config.pods_root.join(".logs").join(namespace).join(pod)
    }

    /// Where a deleted pod's directories wait for removal, named by the pod's uid (a namespace
    /// cannot be named `.trash`), so a same-named successor never shares them.
    pub(crate) fn trash_dir(&self, uid: &str) -> PathBuf {
        self.config.pods_root.join(TRASH).join(uid)
    }

    /// The log file of one container.
    pub(crate) fn log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.pod_log_dir(namespace, pod).join(format!("{container}.log"))
    }

    /// The latest resourceVersion.
    pub(crate) fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// A fresh pod IP in 10.244.0.0/16.
    pub(crate) fn next_pod_ip(&self) -> String {
        let mut store = self.lock();
        let n = store.next_ip;
        store.next_ip = if n >= 65_000 { 5 } else { n + 1 };
        format!("10.244.{}.{}", n / 256, n % 256)
    }

    /// The namespace object (namespaces exist implicitly), or `None` for an invalid name.
    pub(crate) fn namespace(&self, name: &str) -> Option<Value> {
        if !pod::is_dns_label(name) {
            return None;
        }
        let mut store = self.lock();
        Some(insert_namespace(&mut store, name))
    }

    /// Every namespace seen so far and the current resourceVersion.
    pub(crate) fn namespaces(&self) -> (u64, Vec<Value>) {
        let store = self.lock();
        (store.rv, store.namespaces.values().cloned().collect())
    }

    /// One pod.
    pub(crate) fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.lock().pods.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// The pods of `namespace` (every namespace for `None`), with the list's resourceVersion.
    pub(crate) fn pods(&self, namespace: Option<&str>) -> (u64, Vec<Value>) {
        let store = self.lock();
        let pods = store.pods.iter().filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns)).map(|(_, p)| p.clone());
        (store.rv, pods.collect())
    }

    /// Stores a new pod (ADDED); 409 when the name is taken.
    pub(crate) fn insert_pod(&self, mut object: Value) -> Result<Value, ApiError> {
        let namespace = pod::meta_str(&object, "namespace").unwrap_or_default().to_owned();
        let name = pod::meta_str(&object, "name").unwrap_or_default().to_owned();
        let mut store = self.lock();
        insert_namespace(&mut store, &namespace);
        let key = (namespace, name);
        if store.pods.contains_key(&key) {
            return Err(ApiError::already_exists("pods", &key.1));
        }
        let rv = bump(&mut store, &mut object);
        store.pods.insert(key, object.clone());
        self.record(&mut store, Event { rv, kind: EventType::Added, prev: None, object: object.clone() });
        Ok(object)
    }

    /// Applies `change` to the pod with this uid; when it reports a change, the pod gets a new
    /// resourceVersion and watchers a MODIFIED event. `None` when that pod is gone.
    pub(crate) fn update_pod(&self, key: &PodKey, uid: &str, change: impl FnOnce(&mut Value) -> bool) -> Option<Value> {
        let mut store = self.lock();
        let current = store.pods.get(key).filter(|p| pod::meta_str(p, "uid") == Some(uid))?;
        let prev = current.clone();
        let mut object = prev.clone();
        if !change(&mut object) {
            return Some(prev);
        }
        let rv = bump(&mut store, &mut object);
        store.pods.insert(key.clone(), object.clone());
        self.record(&mut store, Event { rv, kind: EventType::Modified, prev: Some(prev), object: object.clone() });
        Some(object)
    }

    /// Removes the pod with this uid after `last` adjusts its final state (DELETED).
    pub(crate) fn remove_pod(&self, key: &PodKey, uid: &str, last: impl FnOnce(&mut Value)) -> Option<Value> {
        let mut store = self.lock();
        store.pods.get(key).filter(|p| pod::meta_str(p, "uid") == Some(uid))?;
        let prev = store.pods.remove(key)?;
        let mut object = prev.clone();
        last(&mut object);
        let rv = bump(&mut store, &mut object);
        self.record(&mut store, Event { rv, kind: EventType::Deleted, prev: Some(prev), object: object.clone() });
        Some(object)
    }

    fn record(&self, store: &mut Store, event: Event) {
        let event = Arc::new(event);
        store.history.push_back(Arc::clone(&event));
        while store.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = store.history.pop_front() {
                store.floor = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
    }

    /// Starts a watch: the events to replay first, then the live feed. `from` = `None` replays
    /// every current pod as ADDED; `Some(rv)` replays the history after `rv`.
    pub(crate) fn watch(&self, from: Option<u64>) -> Result<WatchStart, Expired> {
        let store = self.lock();
        let initial = match from {
            None => store
                .pods
                .values()
                .map(|p| {
                    let rv =
                        p.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|r| r.parse().ok());
                    Arc::new(Event {
                        rv: rv.unwrap_or(store.rv),
                        kind: EventType::Added,
                        prev: None,
                        object: p.clone(),
                    })
                })
                .collect(),
            Some(requested) if requested < store.floor => {
                return Err(Expired { requested, oldest: store.floor });
            }
            Some(requested) => store.history.iter().filter(|e| e.rv > requested).cloned().collect(),
        };
        // Subscribing under the lock means no event falls between the replay and the feed.
        Ok(WatchStart { rv: store.rv, initial, feed: self.events.subscribe() })
    }

    /// One lease.
    pub(crate) fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.lock().leases.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// The leases of `namespace` (every namespace for `None`), with the list's resourceVersion.
    pub(crate) fn leases(&self, namespace: Option<&str>) -> (u64, Vec<Value>) {
        let store = self.lock();
        let leases =
            store.leases.iter().filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns)).map(|(_, l)| l.clone());
        (store.rv, leases.collect())
    }

    /// Stores a new lease; 409 AlreadyExists when the name is taken.
    pub(crate) fn insert_lease(&self, mut object: Value) -> Result<Value, ApiError> {
        let key = object_key(&object);
        let mut store = self.lock();
        insert_namespace(&mut store, &key.0);
        if store.leases.contains_key(&key) {
            return Err(ApiError::already_exists_in(lease::GROUP, lease::RESOURCE, &key.1));
        }
        bump(&mut store, &mut object);
        store.leases.insert(key, object.clone());
        Ok(object)
    }

    /// Replaces a lease whose stored resourceVersion is the body's (422 without one, 409
    /// Conflict on another), keeping what the server owns (uid, creationTimestamp). A missing
    /// lease is created, as leases allow create-on-update. Returns the stored object and
    /// whether it was created.
    pub(crate) fn replace_lease(&self, decoded: lease::Decoded) -> Result<(Value, bool), ApiError> {
        let lease::Decoded { mut object, resource_version, uid } = decoded;
        let key = object_key(&object);
        let mut store = self.lock();
        let Some(current) = store.leases.get(&key) else {
            drop(store);
            lease::stamp_created(&mut object, &uuid::Uuid::new_v4().to_string(), Utc::now());
            return self.insert_lease(object).map(|o| (o, true));
        };
        let Some(expected) = resource_version else {
            let message = "Invalid value: 0x0: must be specified for an update".to_owned();
            return Err(ApiError::invalid_in(
                Some(lease::GROUP),
                lease::RESOURCE,
                &key.1,
                &[("FieldValueInvalid", message, "metadata.resourceVersion")],
            ));
        };
        if pod::meta_str(current, "resourceVersion") != Some(expected.as_str()) {
            return Err(ApiError::conflict_in(lease::GROUP, lease::RESOURCE, &key.1, lease::OPTIMISTIC_LOCK.into()));
        }
        lease::keep_server_fields(&mut object, uid.as_deref(), current)?;
        bump(&mut store, &mut object);
        store.leases.insert(key, object.clone());
        Ok((object, false))
    }

    /// Removes a lease after checking the delete preconditions; 404 when there is none.
    pub(crate) fn remove_lease(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
        resource_version: Option<&str>,
    ) -> Result<Value, ApiError> {
        let key = (namespace.to_owned(), name.to_owned());
        let mut store = self.lock();
        let current =
            store.leases.get(&key).ok_or_else(|| ApiError::not_found_in(lease::GROUP, lease::RESOURCE, name))?;
        let failed = |what: &str, expected: &str, actual: &str| {
            ApiError::conflict_in(
                lease::GROUP,
                lease::RESOURCE,
                name,
                format!("Precondition failed: {what} in precondition: {expected}, {what} in object meta: {actual}"),
            )
        };
        let (actual_uid, actual_rv) = (
            pod::meta_str(current, "uid").unwrap_or_default().to_owned(),
            pod::meta_str(current, "resourceVersion").unwrap_or_default().to_owned(),
        );
        if let Some(expected) = uid.filter(|u| *u != actual_uid) {
            return Err(failed("UID", expected, &actual_uid));
        }
        if let Some(expected) = resource_version.filter(|r| *r != actual_rv) {
            return Err(failed("ResourceVersion", expected, &actual_rv));
        }
        store.rv += 1;
        store.leases.remove(&key).ok_or_else(|| ApiError::not_found_in(lease::GROUP, lease::RESOURCE, name))
    }

    /// Kills every exec process of every pod (shutdown).
    pub(crate) fn kill_all_processes(&self) {
        let uids: Vec<String> =
            self.lock().pods.values().filter_map(|p| pod::meta_str(p, "uid").map(str::to_owned)).collect();
        self.processes.kill_all(&uids);
    }
}

fn object_key(object: &Value) -> PodKey {
    let namespace = pod::meta_str(object, "namespace").unwrap_or_default().to_owned();
    (namespace, pod::meta_str(object, "name").unwrap_or_default().to_owned())
}

fn bump(store: &mut Store, object: &mut Value) -> u64 {
    store.rv += 1;
    object["metadata"]["resourceVersion"] = json!(store.rv.to_string());
    store.rv
}

fn insert_namespace(store: &mut Store, name: &str) -> Value {
    if let Some(existing) = store.namespaces.get(name) {
        return existing.clone();
    }
    store.rv += 1;
    let namespace = json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": uuid::Uuid::new_v4().to_string(),
            "resourceVersion": store.rv.to_string(),
            "creationTimestamp": pod::timestamp(Utc::now()),
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    });
    store.namespaces.insert(name.to_owned(), namespace.clone());
    namespace
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn sim() -> Sim {
        Sim::new(SimConfig::for_tests(PathBuf::from("/nonexistent")), SocketAddr::from(([127, 0, 0, 1], 6443)))
    }

    fn pod(name: &str) -> Value {
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name, "namespace": "default", "uid": name}})
    }

    #[test]
    fn every_change_gets_a_new_resource_version() {
        let sim = sim();
        let created = sim.insert_pod(pod("a")).unwrap();
        let rv1: u64 = created["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
        let key = ("default".to_owned(), "a".to_owned());
        let updated = sim.update_pod(&key, "a", |p| {
            p["status"] = json!({"phase": "Running"});
            true
        });
        let rv2: u64 = updated.unwrap()["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
        assert!(rv2 > rv1);
        assert!(sim.update_pod(&key, "other-uid", |_| true).is_none());
        assert_eq!(sim.insert_pod(pod("a")).unwrap_err().code(), 409);
        assert!(sim.remove_pod(&key, "a", |_| {}).is_some());
        assert!(sim.pod("default", "a").is_none());
    }

    #[test]
    fn watch_replays_history_after_a_resource_version() {
        let sim = sim();
        let first = sim.insert_pod(pod("a")).unwrap();
        let rv: u64 = first["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
        sim.insert_pod(pod("b")).unwrap();
        let replay = sim.watch(Some(rv)).unwrap().initial;
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].object["metadata"]["name"], "b");
        let all = sim.watch(None).unwrap();
        assert_eq!(all.initial.len(), 2);
        assert_eq!(all.rv, sim.current_rv());
        assert_eq!(sim.watch(Some(5)).unwrap_err(), Expired { requested: 5, oldest: FIRST_RESOURCE_VERSION });
    }

    #[test]
    fn old_history_expires() {
        let sim = sim();
        for i in 0..HISTORY_LIMIT + 10 {
            sim.insert_pod(pod(&format!("p{i}"))).unwrap();
        }
        assert!(sim.watch(Some(FIRST_RESOURCE_VERSION + 5)).is_err());
        assert!(sim.watch(Some(sim.current_rv())).is_ok());
    }

    #[test]
    fn compaction_expires_everything_before_it() {
        let sim = sim();
        sim.insert_pod(pod("a")).unwrap();
        let before = sim.current_rv();
        let compactions = sim.compactions();
        let after = sim.compact();
        assert!(after > before);
        assert!(compactions.has_changed().unwrap());
        assert_eq!(sim.watch(Some(before)).unwrap_err(), Expired { requested: before, oldest: after });
        assert!(sim.watch(Some(after)).unwrap().initial.is_empty());
        assert_eq!(sim.watch(None).unwrap().initial.len(), 1, "a fresh watch still sees the pods");
    }

    #[test]
    fn namespaces_exist_implicitly() {
        let sim = sim();
        assert!(sim.namespace("Bad_Name").is_none());
        let ns = sim.namespace("team-a").unwrap();
        assert_eq!(ns["status"]["phase"], "Active");
        assert!(sim.namespaces().1.iter().any(|n| n["metadata"]["name"] == "team-a"));
    }
}
