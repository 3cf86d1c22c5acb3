//! The SQLite store passes the webhook store contract (the same suite as the memory store).
#![expect(clippy::expect_used, reason = "in test set-up a failure is a failed test")]

use std::path::{Path, PathBuf};

use adapters_sqlite::SqliteStore;
use domain::testing::webhooks::webhook_store_contract;

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

#[tokio::test]
async fn webhook_store_contract_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    webhook_store_contract(fresh(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_store_contract_on_a_multi_threaded_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    webhook_store_contract(fresh(dir.path())).await;
}
