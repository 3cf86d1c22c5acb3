//! The PostgreSQL store passes every store contract suite (webhooks included), each scenario in a fresh database,
//! and two signal buses on one database pass the signal bus contract.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use adapters_postgres::testing::{TestDatabase, TestDatabases};
use domain::ports::SignalBus;
use domain::testing::{contracts, signals, webhooks};

#[tokio::test]
async fn project_repository_contract() {
    let dbs = TestDatabases::default();
    contracts::project_repository(|| dbs.fresh_store()).await;
}

#[tokio::test]
async fn api_key_repository_contract() {
    let dbs = TestDatabases::default();
    contracts::api_key_repository(|| dbs.fresh_store()).await;
}

#[tokio::test]
async fn command_repository_contract() {
    let dbs = TestDatabases::default();
    contracts::command_repository(|| dbs.fresh_store()).await;
}

#[tokio::test]
async fn command_queue_contract() {
    let dbs = TestDatabases::default();
    contracts::command_queue(|| dbs.fresh_store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn command_queue_contract_on_a_multi_threaded_runtime() {
    let dbs = TestDatabases::default();
    contracts::command_queue(|| dbs.fresh_store()).await;
}

#[tokio::test]
async fn audit_log_contract() {
    let dbs = TestDatabases::default();
    contracts::audit_log(|| dbs.fresh_store()).await;
}

#[tokio::test]
async fn rate_limit_store_contract() {
    let dbs = TestDatabases::default();
    contracts::rate_limit_store(|| dbs.fresh_store()).await;
}

#[tokio::test]
async fn webhook_store_contract() {
    let dbs = TestDatabases::default();
    webhooks::webhook_store_contract(|| dbs.fresh_store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_store_contract_on_a_multi_threaded_runtime() {
    let dbs = TestDatabases::default();
    webhooks::webhook_store_contract(|| dbs.fresh_store()).await;
}

#[tokio::test]
async fn signal_bus_contract_across_two_buses_on_one_database() {
    let db = TestDatabase::create().await;
    let a: Arc<dyn SignalBus> = Arc::new(db.signal_bus().await);
    let b: Arc<dyn SignalBus> = Arc::new(db.signal_bus().await);
    signals::signal_bus((a, b)).await;
}
