//! The in-memory store passes every store contract suite (it is also the suites' reference).

use domain::testing::{contracts, MemoryStore};

async fn fresh() -> MemoryStore {
    MemoryStore::new()
}

#[tokio::test]
async fn project_repository_contract() {
    contracts::project_repository(fresh).await;
}

#[tokio::test]
async fn api_key_repository_contract() {
    contracts::api_key_repository(fresh).await;
}

#[tokio::test]
async fn command_repository_contract() {
    contracts::command_repository(fresh).await;
}

#[tokio::test]
async fn command_queue_contract() {
    contracts::command_queue(fresh).await;
}

#[tokio::test]
async fn audit_log_contract() {
    contracts::audit_log(fresh).await;
}

#[tokio::test]
async fn rate_limit_store_contract() {
    contracts::rate_limit_store(fresh).await;
}
