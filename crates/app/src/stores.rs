//! The store selected by `DATABASE_URL`, seen as the ports services need: SQLite (embedded,
//! one replica) or Postgres (several replicas, signals over LISTEN/NOTIFY).

use std::sync::Arc;

use adapters_postgres::{PgSignalBus, PgStore};
use adapters_sqlite::SqliteStore;
use domain::ports::{
    ApiKeyRepository, AuditLog, CommandQueue, CommandRepository, HealthCheck, ProjectRepository, RateLimitStore,
    SignalBus,
};
use domain::webhook::{DeliveryQueue, WebhookRepository};

use crate::config::DatabaseUrl;
use crate::wiring::StartupError;

/// Every store port, from one backend.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "trait objects without Debug")]
pub struct Stores {
    /// Projects.
    pub projects: Arc<dyn ProjectRepository>,
    /// API keys (uncached).
    pub keys: Arc<dyn ApiKeyRepository>,
    /// Commands as clients see them.
    pub commands: Arc<dyn CommandRepository>,
    /// The queue as workers see it.
    pub queue: Arc<dyn CommandQueue>,
    /// The audit log.
    pub audit: Arc<dyn AuditLog>,
    /// Rate-limit windows: the shared store's on Postgres, in this process's memory on SQLite.
    pub rate_limits: Arc<dyn RateLimitStore>,
    /// Readiness.
    pub health: Arc<dyn HealthCheck>,
    /// Signals to and from the other replicas on the same store (`None`: this is the only one).
    pub signals: Option<Arc<dyn SignalBus>>,
    /// Webhook subscriptions and deliveries.
    pub webhooks: WebhookStores,
}

/// The webhook ports of a store.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "trait objects without Debug")]
pub struct WebhookStores {
    /// Subscriptions.
    pub subscriptions: Arc<dyn WebhookRepository>,
    /// The outbox and the deliveries.
    pub deliveries: Arc<dyn DeliveryQueue>,
}

impl WebhookStores {
    fn of<S: WebhookRepository + DeliveryQueue + 'static>(store: Arc<S>) -> Self {
        Self { subscriptions: store.clone(), deliveries: store }
    }
}

impl Stores {
    /// Views one store through every port.
    fn of<S>(store: Arc<S>, signals: Option<Arc<dyn SignalBus>>) -> Self
    where
        S: ProjectRepository
            + ApiKeyRepository
            + CommandRepository
            + CommandQueue
            + AuditLog
            + RateLimitStore
            + HealthCheck
            + WebhookRepository
            + DeliveryQueue
            + 'static,
    {
        Self {
            projects: store.clone(),
            keys: store.clone(),
            commands: store.clone(),
            queue: store.clone(),
            audit: store.clone(),
            rate_limits: store.clone(),
            webhooks: WebhookStores::of(store.clone()),
            health: store,
            signals,
        }
    }
}

/// How to open the store.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Apply pending migrations (SQLite always does: it is embedded and single-replica).
    pub migrate: bool,
    /// Postgres connections.
    pub pool_size: u32,
}

/// Opens the store `url` selects.
pub async fn open(url: &DatabaseUrl, options: OpenOptions) -> Result<Stores, StartupError> {
    if url.is_sqlite() {
        let store = SqliteStore::open(url.expose())?;
        store.migrate()?;
        let store = Arc::new(store);
        // One process is all a SQLite store has: its rate-limit windows live in memory, with
        // the same answers, instead of a write transaction per request on its one writer.
        let local_windows: Arc<dyn RateLimitStore> = Arc::new(services::rate_limit::LocalWindows::default());
        return Ok(Stores { rate_limits: local_windows, ..Stores::of(store, None) });
    }
    if !url.is_postgres() {
        return Err(StartupError::Config(format!("DATABASE_URL {url:?}: use sqlite://PATH or postgres://…")));
    }
    let store = PgStore::connect(url.expose(), options.pool_size).await?;
    if options.migrate {
        store.migrate().await?;
    }
    let signals: Arc<dyn SignalBus> = Arc::new(PgSignalBus::connect(url.expose()).await?);
    let store = Arc::new(store);
    // Shared by every replica: each takes blocks of a key's window and admits from them, so
    // the key's row is written once per block rather than per request.
    let leased: Arc<dyn RateLimitStore> = Arc::new(services::rate_limit::LeasedWindows::new(store.clone()));
    Ok(Stores { rate_limits: leased, ..Stores::of(store, Some(signals)) })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use domain::DomainError;

    use super::*;

    fn url(raw: &str) -> DatabaseUrl {
        raw.parse().unwrap_or_else(|_| panic!("{raw} parses as a URL value"))
    }

    const OPTIONS: OpenOptions = OpenOptions { migrate: true, pool_size: 2 };

    #[tokio::test]
    async fn an_unknown_scheme_is_a_configuration_error() {
        let Err(err) = open(&url("mysql://root@127.0.0.1/rdev"), OPTIONS).await else { panic!("mysql opened") };
        assert!(matches!(err, StartupError::Config(_)), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_postgres_fails_fast_as_unavailable() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let started = Instant::now();
        let Err(err) = open(&url("postgres://rdev@127.0.0.1:1/rdev"), OPTIONS).await else { panic!("opened") };
        assert!(matches!(err, StartupError::Store(DomainError::Unavailable(_))), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    }
}
