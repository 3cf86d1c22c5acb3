//! A whole deployment on loopback: a dedicated PostgreSQL cluster with a migrated database,
//! an admin key made with the CLI, N `rdev-api serve` replicas, and kube-sim for
//! `EXECUTOR=kube`. Dropping it kills every child; a failing test gets the replicas' log tails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use adapters_postgres::testing::{TestCluster, TestDatabase};
use serde_json::Value;

use crate::api::Api;
use crate::replica::Replica;
use crate::sim::Sim;

/// The namespace project pods go to under kube-sim.
pub const KUBE_NAMESPACE: &str = "rdev-projects";

/// Where commands run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    /// Sandboxed local processes (the default executor).
    Process,
    /// Pods on the kube-sim binary.
    Kube,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// `CONCURRENT_COMMANDS` of each replica (one entry per replica).
    pub concurrent: Vec<u32>,
    /// `LEASE_SECONDS`.
    pub lease_seconds: u64,
    /// `SHUTDOWN_GRACE_SECONDS`.
    pub grace_seconds: u64,
    /// `EXECUTOR`.
    pub executor: Executor,
    /// More environment for every replica (overrides the defaults).
    pub extra_env: Vec<(String, String)>,
}

impl StackConfig {
    /// `replicas` replicas of `concurrent` slots, a 6 s lease, a 5 s grace, processes.
    pub fn new(replicas: usize, concurrent: u32) -> StackConfig {
        StackConfig {
            concurrent: vec![concurrent; replicas],
            lease_seconds: 6,
            grace_seconds: 5,
            executor: Executor::Process,
            extra_env: Vec::new(),
        }
    }
}

/// The running deployment. Fields drop in order: replicas before the database's server.
#[derive(Debug)]
pub struct Stack {
    /// The replicas (`r0`, `r1`, …), started and ready.
    pub replicas: Vec<Replica>,
    /// kube-sim, with `EXECUTOR=kube`.
    pub sim: Option<Sim>,
    /// A client with the admin key.
    pub api: Api,
    /// The database every replica shares.
    pub db: TestDatabase,
    /// Its server, which tests may restart.
    pub cluster: Arc<TestCluster>,
    /// `rdev-api`.
    pub bin: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Stack {
    /// Starts everything and waits until every replica is ready.
    ///
    /// # Panics
    /// When any part does not start; the message says which and why.
    pub async fn start(cfg: &StackConfig) -> Stack {
        let bin = crate::bins::binary("rdev-api");
        let dir = tempfile::Builder::new().prefix("rdev-e2e-").tempdir().expect("temp dir");
        let cluster =
            tokio::task::spawn_blocking(TestCluster::start_dedicated_durable).await.expect("start PostgreSQL");
        let cluster = Arc::new(cluster);
        let db = TestDatabase::create_on(&cluster).await;
        let key = admin_key(&bin, db.url()).await;
        let sim = match cfg.executor {
            Executor::Kube => Some(Sim::start(dir.path(), KUBE_NAMESPACE).await),
            Executor::Process => None,
        };
        let mut replicas = Vec::new();
        for (i, concurrent) in cfg.concurrent.iter().enumerate() {
            let env = replica_env(cfg, db.url(), *concurrent, sim.as_ref());
            let mut r = Replica::new(&format!("r{i}"), &bin, dir.path(), crate::free_port(), env);
            r.spawn();
            replicas.push(r);
        }
        let api = Api::new(&key, Duration::from_secs(10));
        for r in &mut replicas {
            r.wait_ready(api.client()).await;
        }
        Stack { replicas, sim, api, db, cluster, bin, dir: Some(dir) }
    }

    /// Every replica's base URL, by index.
    pub fn bases(&self) -> Vec<String> {
        self.replicas.iter().map(Replica::base).collect()
    }

    /// The scratch directory (logs, workspaces, kubeconfig).
    pub fn dir(&self) -> PathBuf {
        self.dir.as_ref().map(|d| d.path().to_path_buf()).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for r in &self.replicas {
                eprintln!("---- {} (last lines of its log) ----\n{}", r.name, r.log_tail(40));
            }
        }
        if std::env::var("E2E_KEEP").is_ok_and(|v| v == "1") {
            if let Some(dir) = self.dir.take() {
                eprintln!("e2e: kept {}", dir.keep().display());
            }
        }
    }
}

fn replica_env(cfg: &StackConfig, database_url: &str, concurrent: u32, sim: Option<&Sim>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("DATABASE_URL", database_url.to_owned()),
        ("DATABASE_POOL_SIZE", "16".to_owned()),
        ("MIGRATE_ON_START", "false".to_owned()),
        ("CONCURRENT_COMMANDS", concurrent.to_string()),
        ("LEASE_SECONDS", cfg.lease_seconds.to_string()),
        ("SHUTDOWN_GRACE_SECONDS", cfg.grace_seconds.to_string()),
        // A load test is not a rate-limit test; the queue cap is not what is measured either.
        ("RATE_LIMIT_RPS", "100000".to_owned()),
        ("MAX_QUEUED_COMMANDS", "100000".to_owned()),
        ("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true".to_owned()),
        ("RUST_LOG", std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "warn".to_owned())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(sim) = sim {
        env.push(("EXECUTOR".into(), "kube".into()));
        env.push(("KUBECONFIG".into(), sim.kubeconfig.display().to_string()));
        env.push(("KUBE_NAMESPACE".into(), KUBE_NAMESPACE.into()));
        env.push(("KUBE_BREAKER_OPEN_SECONDS".into(), "1".into()));
    } else {
        env.push(("EXECUTOR".into(), "process".into()));
    }
    for (k, v) in &cfg.extra_env {
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// An admin key made the way an operator makes the first one: `rdev-api keys create --json`.
async fn admin_key(bin: &std::path::Path, database_url: &str) -> String {
    let out = tokio::process::Command::new(bin)
        .args(["keys", "create", "--name", "e2e-admin", "--scope", "admin", "--json"])
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run rdev-api keys create");
    assert!(out.status.success(), "keys create failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("keys create --json prints JSON");
    v["key"].as_str().expect("a key").to_owned()
}
