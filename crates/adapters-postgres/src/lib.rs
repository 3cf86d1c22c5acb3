//! rdev-api's production store: every repository port of `domain::ports` on PostgreSQL through
//! diesel-async with a bounded bb8 pool, the migrations in `migrations/postgres` built in, and
//! a `SignalBus` over LISTEN/NOTIFY.
//!
//! Several replicas share one database. What must hold across them is decided by PostgreSQL:
//! the queue claims with `FOR UPDATE SKIP LOCKED` and serializes claims per project on the
//! project's row (so caps hold), fences come from a sequence, rate-limit decisions are one
//! atomic statement, and audit appends lock the table against each other so the chain never forks.

mod api_keys;
mod audit;
mod codec;
mod commands;
mod connection;
mod driver_errors;
mod events;
mod finishes;
mod group_commit;
mod prepared;
mod projects;
mod queue;
mod rate_limits;
mod schema;
mod signals;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
mod webhooks;

use std::collections::HashMap;

use async_trait::async_trait;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use domain::ids::WorkerId;
use domain::ports::HealthCheck;
use domain::{DomainError, DomainResult};

use crate::connection::{Connections, Pooled};
pub(crate) use crate::connection::{StoreError, StoreResult};
use crate::finishes::Finishes;
pub use crate::signals::PgSignalBus;

/// The SQL migrations of this store, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// Connections of the liveness pool: a worker's renewals and its liveness task.
const LIVENESS_POOL_SIZE: u32 = 2;
/// Liveness statements never wait long: a renewal stuck behind a lock fails, is logged, and is
/// tried again at the next tick, which keeps both connections free for the others.
const LIVENESS_SESSION: &str = "SET lock_timeout = '1s'; SET statement_timeout = '3s'";

/// Held while migrating, so replicas starting together migrate one after the other.
const MIGRATION_LOCK: i64 = 0x7264_6576_6d69_6772; // "rdevmigr"

/// The PostgreSQL store: a cheap-to-clone handle on a bounded connection pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    connections: Connections,
    /// A small pool of its own for what keeps commands' fates right (lease renewals, reaping,
    /// presence): requests that pile up behind a lock (an audit append waiting on a stopped
    /// replica) can exhaust the main pool, and must not starve a lease into expiry.
    liveness: Connections,
    url: String,
    /// The sessions that hold this process's replicas' presence locks, by replica.
    presence: PresenceSessions,
    /// How commands end: finishes that arrive together share one statement.
    finishes: Finishes,
}

/// Replicas' presence sessions: each holds its replica's presence lock while it lives.
#[derive(Clone, Default)]
pub(crate) struct PresenceSessions(std::sync::Arc<tokio::sync::Mutex<HashMap<WorkerId, AsyncPgConnection>>>);

impl PresenceSessions {
    /// The sessions, locked (one hold or release at a time).
    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, HashMap<WorkerId, AsyncPgConnection>> {
        self.0.lock().await
    }
}

impl std::fmt::Debug for PresenceSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceSessions").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`) with a pool of at most
    /// `pool_size` connections, opened on demand. One connection is opened now, so a wrong URL
    /// or an unreachable server is reported at once; later outages are survived (requests fail
    /// as `Unavailable` meanwhile, and the pool reconnects when the server is back).
    ///
    /// # Errors
    /// `Unavailable` when the server cannot be reached, `Invalid` for a malformed URL.
    pub async fn connect(url: &str, pool_size: u32) -> DomainResult<PgStore> {
        connection::target(url).map_err(|e| DomainError::invalid("DATABASE_URL", e))?;
        let first = open(url).await?;
        let connections = Connections::new(url, pool_size, Some(first));
        Ok(PgStore {
            finishes: Finishes::grouped(connections.clone()),
            connections,
            liveness: Connections::with_session_settings(url, LIVENESS_POOL_SIZE, None, Some(LIVENESS_SESSION)),
            url: url.to_owned(),
            presence: PresenceSessions::default(),
        })
    }

    /// This store with at most `max` finishes sharing one statement (64 by default; 1 writes
    /// every finish on its own, as before finishes were grouped, for comparisons).
    #[must_use]
    pub fn with_max_finish_batch(mut self, max: usize) -> PgStore {
        self.finishes = Finishes::new(self.connections.clone(), max);
        self
    }

    /// Runs the migrations that have not run yet; running it again changes nothing. Replicas
    /// that migrate at the same time wait for each other.
    ///
    /// # Errors
    /// `Unavailable` when the server cannot be reached, `Internal` when a migration fails.
    pub async fn migrate(&self) -> DomainResult<()> {
        migrate_url(&self.url).await
    }

    /// A pooled connection, or `Unavailable`.
    pub(crate) async fn conn(&self) -> DomainResult<Pooled<'_>> {
        self.connections.get().await
    }

    /// A connection of the liveness pool (lease renewals, reaping, presence), or `Unavailable`.
    pub(crate) async fn liveness_conn(&self) -> DomainResult<Pooled<'_>> {
        self.liveness.get().await
    }
}

/// Runs the pending migrations on the database at `url` (what `rdev-api migrate` does).
///
/// # Errors
/// `Unavailable` when the server cannot be reached, `Internal` when a migration fails.
pub async fn migrate_url(url: &str) -> DomainResult<()> {
    let mut conn = open(url).await?;
    let lock = format!("SELECT pg_advisory_lock({MIGRATION_LOCK})");
    conn.batch_execute(&lock).await.map_err(|e| connection::db_error(e, "migration lock"))?;
    // Diesel's migration harness is synchronous; it drives the async connection from a
    // blocking thread, and the lock goes away with the connection.
    let applied = tokio::task::spawn_blocking(move || {
        let mut sync = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        sync.run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.into_iter().map(|v| v.to_string()).collect::<Vec<_>>())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| DomainError::Internal(format!("migrating: blocking task failed: {e}")))?
    .map_err(|e| DomainError::Internal(format!("migrating the PostgreSQL database: {e}")))?;
    for version in applied {
        tracing::info!(%version, "applied PostgreSQL migration");
    }
    Ok(())
}

/// Opens one connection outside the pool.
async fn open(url: &str) -> DomainResult<AsyncPgConnection> {
    connection::establish(url).await.map_err(|e| match e {
        diesel::ConnectionError::InvalidConnectionUrl(m) => DomainError::invalid("DATABASE_URL", m),
        other => DomainError::Unavailable(format!("cannot connect to PostgreSQL: {other}")),
    })
}

#[async_trait]
impl HealthCheck for PgStore {
    async fn check(&self) -> DomainResult<()> {
        let mut conn = self.conn().await?;
        conn.batch_execute("SELECT 1").await.map_err(|e| match connection::db_error(e, "health check") {
            DomainError::Internal(m) => DomainError::Unavailable(m),
            other => other,
        })
    }
}
