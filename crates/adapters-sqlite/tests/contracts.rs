//! The SQLite store passes every store contract suite, each store in its own file.
#![expect(clippy::expect_used, reason = "in test set-up a failure is a failed test")]

use std::path::{Path, PathBuf};

use adapters_sqlite::SqliteStore;
use domain::testing::contracts;
use tempfile::TempDir;

/// A migrated store in a new file under `dir`; the suites call this once per scenario.
async fn fresh_in(dir: PathBuf) -> SqliteStore {
    let path = dir.join(format!("{}.db", uuid::Uuid::now_v7()));
    let store = SqliteStore::open(&format!("sqlite://{}", path.display())).expect("open");
    store.migrate().expect("migrate");
    store
}

/// The directory outlives the suite: SQLite refuses writes to a file unlinked while open.
fn fresh(dir: &Path) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = SqliteStore>>> + '_ {
    move || Box::pin(fresh_in(dir.to_path_buf()))
}

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[tokio::test]
async fn project_repository_contract() {
    let dir = tempdir();
    contracts::project_repository(fresh(dir.path())).await;
}

#[tokio::test]
async fn api_key_repository_contract() {
    let dir = tempdir();
    contracts::api_key_repository(fresh(dir.path())).await;
}

#[tokio::test]
async fn command_repository_contract() {
    let dir = tempdir();
    contracts::command_repository(fresh(dir.path())).await;
}

#[tokio::test]
async fn command_queue_contract() {
    let dir = tempdir();
    contracts::command_queue(fresh(dir.path())).await;
}

#[tokio::test]
async fn audit_log_contract() {
    let dir = tempdir();
    contracts::audit_log(fresh(dir.path())).await;
}

#[tokio::test]
async fn rate_limit_store_contract() {
    let dir = tempdir();
    contracts::rate_limit_store(fresh(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn command_queue_contract_on_a_multi_threaded_runtime() {
    let dir = tempdir();
    contracts::command_queue(fresh(dir.path())).await;
}
