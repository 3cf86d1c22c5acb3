//! Test support (feature `testing`): a PostgreSQL server for tests and a fresh, migrated
//! database per test.
//!
//! With `DATABASE_URL=postgres://…` set, that server is used (the role needs CREATEDB).
//! Otherwise one throwaway cluster is started per test process from the machine's binaries.
//! Nothing skips: without either, tests panic saying how to get a server. The migrations run
//! once per server into a template database; each test's database is a copy of it.

mod cluster;

use std::sync::OnceLock;

use uuid::Uuid;

pub use cluster::TestCluster;

use crate::{migrate_url, PgSignalBus, PgStore};

/// Connections per store in tests: enough for the concurrency suites.
pub const TEST_POOL_SIZE: u32 = 16;

/// Identifies the migrations compiled in, so a long-lived server keeps one template per version.
const FINGERPRINT: &str = env!("RDEV_PG_MIGRATIONS_FINGERPRINT");

/// Serializes template creation among test processes sharing a `DATABASE_URL` server.
const TEMPLATE_LOCK: i64 = 0x7264_6576_7465_6d70; // "rdevtemp"

/// Where test databases are made.
#[derive(Debug)]
enum Server {
    /// A server named by `DATABASE_URL`; test databases are dropped after their test.
    External(String),
    /// The throwaway cluster of this process; it goes away with the process.
    Cluster(TestCluster),
}

impl Server {
    fn admin_url(&self) -> String {
        match self {
            Server::External(url) => url.clone(),
            Server::Cluster(cluster) => cluster.admin_url(),
        }
    }

    fn url_for(&self, database: &str) -> String {
        match self {
            Server::External(url) => with_database(url, database),
            Server::Cluster(cluster) => cluster.url_for(database),
        }
    }
}

/// The server of this test process, started on first use.
fn shared() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(Server::External(url)),
        _ => TestCluster::create(false).map(Server::Cluster),
    });
    server.as_ref().unwrap_or_else(|e| panic!("no PostgreSQL server for tests: {e}"))
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Runs `sql` on a new connection to `url`.
async fn execute(url: &str, sql: &str) -> Result<(), String> {
    let config = crate::connection::client_config(url).map_err(|e| e.to_string())?;
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
        format!("cannot connect to {}: {}", redact(url), crate::connection::describe_postgres_error(&e))
    })?;
    let driver = tokio::spawn(connection);
    let done = client.batch_execute(sql).await.map_err(|e| crate::connection::describe_postgres_error(&e));
    drop(client);
    // The connection ends once the client is gone; its own result says nothing new.
    let _ = driver.await;
    done.map_err(|e| format!("{sql}: {e}"))
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_end = url[scheme + 3..at].find(':').map_or(at, |i| scheme + 3 + i);
            format!("{}{}", &url[..user_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The migrated template database on `server`, made once per server and migration version.
async fn template(server: &Server) -> String {
    static CLUSTER_TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    let name = format!("rdev_template_{FINGERPRINT}");
    match server {
        Server::Cluster(_) => CLUSTER_TEMPLATE
            .get_or_try_init(|| async { build_template(server, &name).await.map(|()| name.clone()) })
            .await
            .cloned()
            .unwrap_or_else(|e| panic!("cannot prepare the template database: {e}")),
        Server::External(_) => {
            build_template(server, &name).await.unwrap_or_else(|e| panic!("cannot prepare the template database: {e}"));
            name
        }
    }
}

/// Creates and migrates the template `name` unless it exists. Built under another name and
/// renamed when complete, under a lock, so concurrent test processes never see half of one.
async fn build_template(server: &Server, name: &str) -> Result<(), String> {
    let admin = server.admin_url();
    let config = crate::connection::client_config(&admin).map_err(|e| e.to_string())?;
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
        format!("cannot connect to {}: {}", redact(&admin), crate::connection::describe_postgres_error(&e))
    })?;
    let driver = tokio::spawn(connection);
    let describe = |e: tokio_postgres::Error| crate::connection::describe_postgres_error(&e);
    let result = async {
        client.batch_execute(&format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})")).await.map_err(describe)?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .map_err(describe)?
            .is_some();
        if !exists {
            let building = format!("{name}_{}", Uuid::now_v7().simple());
            client.batch_execute(&format!("CREATE DATABASE {building}")).await.map_err(describe)?;
            migrate_url(&server.url_for(&building)).await.map_err(|e| e.to_string())?;
            client.batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}")).await.map_err(describe)?;
        }
        client.batch_execute(&format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})")).await.map_err(describe)
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}

/// A fresh, migrated database of its own for one test.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    /// Set when the database lives on a server that outlasts the test process.
    drop_with: Option<String>,
}

impl TestDatabase {
    /// A new migrated database on this process's test server (`DATABASE_URL`, or a throwaway
    /// cluster started on first use).
    ///
    /// # Panics
    /// When no server can be had or set up; the message says how to get one.
    pub async fn create() -> TestDatabase {
        let server = shared();
        Self::create_in(server).await
    }

    /// A new migrated database on `cluster` (a dedicated one, for tests that stop the server).
    ///
    /// # Panics
    /// When the database cannot be created.
    pub async fn create_on(cluster: &TestCluster) -> TestDatabase {
        let name = format!("t_{}", Uuid::now_v7().simple());
        execute(&cluster.admin_url(), &format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database: {e}"));
        let url = cluster.url_for(&name);
        migrate_url(&url).await.unwrap_or_else(|e| panic!("cannot migrate the test database: {e}"));
        TestDatabase { name, url, drop_with: None }
    }

    async fn create_in(server: &Server) -> TestDatabase {
        let template = template(server).await;
        let name = format!("t_{}", Uuid::now_v7().simple());
        execute(&server.admin_url(), &format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database: {e}"));
        let drop_with = matches!(server, Server::External(_)).then(|| server.admin_url());
        TestDatabase { url: server.url_for(&name), name, drop_with }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A store on this database with `TEST_POOL_SIZE` connections.
    ///
    /// # Panics
    /// When the database cannot be reached.
    pub async fn store(&self) -> PgStore {
        PgStore::connect(&self.url, TEST_POOL_SIZE).await.unwrap_or_else(|e| panic!("cannot connect a store: {e}"))
    }

    /// A plain connection to this database, for looking at or locking it behind a store's back.
    ///
    /// # Panics
    /// When the database cannot be reached.
    pub async fn raw_client(&self) -> tokio_postgres::Client {
        raw_client(&self.url).await
    }

    /// A signal bus on this database.
    ///
    /// # Panics
    /// When the database cannot be reached.
    pub async fn signal_bus(&self) -> PgSignalBus {
        PgSignalBus::connect(&self.url).await.unwrap_or_else(|e| panic!("cannot connect a signal bus: {e}"))
    }
}

/// A plain connection to `url`, driven by a task of its own.
///
/// # Panics
/// When the server cannot be reached.
pub async fn raw_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("raw connection: {e}"));
    tokio::spawn(connection);
    client
}

/// Databases kept until the end of a test, for suites that ask for several fresh stores.
#[derive(Debug, Default)]
pub struct TestDatabases(std::sync::Mutex<Vec<TestDatabase>>);

impl TestDatabases {
    /// A store on a new database, which lives as long as `self`.
    ///
    /// # Panics
    /// When no server can be had or set up.
    pub async fn fresh_store(&self) -> PgStore {
        let database = TestDatabase::create().await;
        let store = database.store().await;
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(database);
        store
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(admin) = self.drop_with.take() else { return };
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop cannot await, and may run inside a runtime that must not block on itself.
        let dropped = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(execute(&admin, &sql))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "dropping a test database"),
            Err(_) => tracing::warn!("dropping a test database panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_swapped_in_urls() {
        assert_eq!(with_database("postgres://u:p@h:5432/app", "t_1"), "postgres://u:p@h:5432/t_1");
        assert_eq!(with_database("postgres://u@h/app?sslmode=disable", "t_1"), "postgres://u@h/t_1?sslmode=disable");
        assert_eq!(with_database("postgresql://h", "t_1"), "postgresql://h/t_1");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
