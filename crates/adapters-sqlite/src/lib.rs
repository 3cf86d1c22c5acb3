//! rdev-api's embedded default store: every repository port of `domain::ports` on SQLite,
//! through diesel with an r2d2 pool and the migrations in `migrations/sqlite` built in.
//!
//! Diesel is blocking, so every query runs on tokio's blocking pool, and only as many at once as
//! the pool has connections: callers beyond that wait as futures, not as parked threads. Writes
//! that read before they write run in `BEGIN IMMEDIATE` transactions: SQLite then takes its
//! single write lock up front, so concurrent callers (other tasks, other processes) serialize
//! instead of failing with `SQLITE_BUSY` when a read transaction tries to upgrade.

mod api_keys;
mod audit;
mod codec;
mod commands;
mod connection;
mod driver_errors;
mod events;
mod projects;
mod queue;
mod rate_limits;
mod schema;
mod webhooks;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::{RunQueryDsl, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use domain::ports::HealthCheck;
use domain::{DomainError, DomainResult};
use tokio::sync::Semaphore;

use connection::pool_error;
pub(crate) use connection::{StoreError, StoreResult};

/// The SQL migrations of this store, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// Connections per pool: SQLite has one writer at a time, so more mostly adds waiting.
const POOL_SIZE: u32 = 8;
/// How long a caller waits for a free connection before the store counts as unavailable.
const POOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings every connection gets. `busy_timeout` comes first so that switching a fresh
/// file to WAL waits for other connections instead of failing.
const CONNECTION_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; \
     PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = NORMAL; \
     PRAGMA foreign_keys = ON;";

type SqlitePool = Pool<ConnectionManager<SqliteConnection>>;

/// The SQLite store: a cheap-to-clone handle on a connection pool.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One permit per connection, taken before a query goes to the blocking pool. Without it a
    /// burst (thousands of streams opening at once) parks one blocking thread per caller on
    /// `pool.get()`, and each thread's stack and malloc arena stay resident after the burst;
    /// a caller that hangs up while it waits here also never runs its query.
    callers: Arc<Semaphore>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.pool.state();
        f.debug_struct("SqliteStore").field("connections", &state.connections).finish()
    }
}

#[derive(Debug)]
struct Pragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(CONNECTION_PRAGMAS).map_err(diesel::r2d2::Error::QueryError)
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url`: `sqlite://path`, `sqlite:path` or a
    /// plain path; `:memory:` gives a private in-memory database. Parent directories are created.
    ///
    /// # Errors
    /// `Unavailable` when the file cannot be created or opened.
    pub fn open(url: &str) -> DomainResult<SqliteStore> {
        let path = database_path(url);
        // Every connection to `:memory:` is its own database, so the pool must hold just one.
        let in_memory = path == ":memory:";
        if !in_memory {
            create_parent_dirs(path)?;
            make_private(path)?;
        }
        let manager = ConnectionManager::<SqliteConnection>::new(path);
        let mut builder = Pool::builder().max_size(POOL_SIZE).connection_timeout(POOL_TIMEOUT);
        if in_memory {
            // Closing the only connection would drop the database, so it is kept forever.
            builder = builder.max_size(1).idle_timeout(None).max_lifetime(None);
        }
        let pool = builder
            .connection_customizer(Box::new(Pragmas))
            .build(manager)
            .map_err(|e| DomainError::Unavailable(format!("cannot open SQLite database {path}: {e}")))?;
        // A pool size is a u32 and at most POOL_SIZE, so it always fits a usize.
        let callers = Arc::new(Semaphore::new(pool.max_size() as usize));
        Ok(SqliteStore { pool, callers })
    }

    /// Runs the migrations that have not run yet; running it again changes nothing.
    ///
    /// # Errors
    /// `Unavailable` when the database is busy or unreachable, `Internal` when a migration fails.
    pub fn migrate(&self) -> DomainResult<()> {
        let mut conn = self.pool.get().map_err(pool_error)?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| connection::migration_error(e.as_ref(), "migrating the SQLite database"))?;
        for version in applied {
            tracing::info!(%version, "applied SQLite migration");
        }
        Ok(())
    }

    /// Runs `op` on a pooled connection on the blocking pool, in autocommit mode, once one of
    /// the pool's permits is free (waiting for it at most `POOL_TIMEOUT`; with a permit, a
    /// connection of this pool is free unless another process's transaction holds the file).
    pub(crate) async fn read<T, F>(&self, what: &'static str, op: F) -> DomainResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> StoreResult<T> + Send + 'static,
    {
        let permit = tokio::time::timeout(POOL_TIMEOUT, Arc::clone(&self.callers).acquire_owned())
            .await
            .map_err(|_| {
                DomainError::Unavailable(format!("{what}: no SQLite connection free within {POOL_TIMEOUT:?}"))
            })?
            .map_err(|_| DomainError::Internal(format!("{what}: the store's permits were closed")))?;
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = pool.get().map_err(StoreError::Pool)?;
            op(&mut conn)
        })
        .await
        .map_err(|e| DomainError::Internal(format!("{what}: blocking task failed: {e}")))?
        .map_err(|e| e.into_domain(what))
    }

    /// Runs `op` in one `BEGIN IMMEDIATE` transaction: all of it or nothing, serialized with
    /// every other writer. An `Err` from `op` rolls back.
    pub(crate) async fn write<T, F>(&self, what: &'static str, op: F) -> DomainResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> StoreResult<T> + Send + 'static,
    {
        self.read(what, move |conn| conn.immediate_transaction(op)).await
    }
}

/// The file path inside a `DATABASE_URL`.
/// The database file `url` names, with its `-wal` and `-shm` companions; empty for
/// `:memory:` and `file:` URIs.
pub fn database_files(url: &str) -> Vec<std::path::PathBuf> {
    let path = database_path(url);
    if path == ":memory:" || path.starts_with("file:") {
        return Vec::new();
    }
    [path.to_owned(), format!("{path}-wal"), format!("{path}-shm")].into_iter().map(Into::into).collect()
}

fn database_path(url: &str) -> &str {
    url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url)
}

fn create_parent_dirs(path: &str) -> DomainResult<()> {
    // `file:` URIs and query strings are SQLite's business; only plain paths get directories.
    if path.starts_with("file:") {
        return Ok(());
    }
    match Path::new(path).parent() {
        // New directories are private (0700): they hold the keys' hashes and every command.
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
                .create(dir)
                .map_err(|e| DomainError::Unavailable(format!("cannot create directory {}: {e}", dir.display())))
        }
        _ => Ok(()),
    }
}

/// Creates the database file with mode 0600 if it is missing, and makes an existing one and
/// its `-wal`/`-shm` files 0600 (SQLite gives those the database file's mode when it makes them).
fn make_private(path: &str) -> DomainResult<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if path.starts_with("file:") {
        return Ok(());
    }
    let unavailable = |e: std::io::Error| DomainError::Unavailable(format!("cannot secure {path}: {e}"));
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(unavailable)?;
    for file in [path.to_owned(), format!("{path}-wal"), format!("{path}-shm")] {
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(unavailable(e)),
            _ => {}
        }
    }
    Ok(())
}

#[async_trait]
impl HealthCheck for SqliteStore {
    async fn check(&self) -> DomainResult<()> {
        self.read("health check", |conn| {
            diesel::sql_query("SELECT 1").execute(conn)?;
            Ok(())
        })
        .await
        .map_err(|e| match e {
            DomainError::Unavailable(m) | DomainError::Internal(m) => DomainError::Unavailable(m),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_file() {
        assert_eq!(database_path("sqlite://rdev.db"), "rdev.db");
        assert_eq!(database_path("sqlite:///var/lib/rdev/rdev.db"), "/var/lib/rdev/rdev.db");
        assert_eq!(database_path("sqlite:data/rdev.db"), "data/rdev.db");
        assert_eq!(database_path("/tmp/x.db"), "/tmp/x.db");
        assert_eq!(database_path(":memory:"), ":memory:");
    }

    #[tokio::test]
    async fn a_caller_that_hangs_up_while_waiting_for_a_connection_never_runs_its_query() {
        // `:memory:` has one connection, so the second read waits for the first.
        let store = SqliteStore::open(":memory:").expect("open");
        let (release, held) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .read("holding the connection", move |_| {
                        held.recv().expect("released");
                        Ok(())
                    })
                    .await
            }
        });
        while store.callers.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiting = store.read("waiting for it", {
            let ran = Arc::clone(&ran);
            move |_| {
                ran.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        });
        let gave_up = tokio::time::timeout(Duration::from_millis(50), waiting).await;
        assert!(gave_up.is_err(), "the second read waited for the connection");
        release.send(()).expect("first read still running");
        first.await.expect("first read joined").expect("first read");
        store.read("after both", |_| Ok(())).await.expect("the pool is free again");
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst), "the dropped read's query ran");
        assert_eq!(store.callers.available_permits(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_finds_no_connection_free_in_time_is_told_the_store_is_unavailable() {
        let store = SqliteStore::open(":memory:").expect("open");
        let busy = Arc::clone(&store.callers).acquire_many_owned(1).await.expect("every permit");
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let read = store
            .read("waiting past the timeout", {
                let ran = Arc::clone(&ran);
                move |_| {
                    ran.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(())
                }
            })
            .await;
        assert!(
            matches!(&read, Err(DomainError::Unavailable(why)) if why.contains("no SQLite connection free")),
            "{read:?}"
        );
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst), "the query ran without a permit");
        drop(busy);
        store.read("once one is free", |_| Ok(())).await.expect("read");
    }
}
