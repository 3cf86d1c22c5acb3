//! Connections: how one is opened (timeouts, keepalives), the bounded pool that hands them
//! out, and how driver and pool failures become `DomainError`s.
//!
//! A server that goes away is noticed per connection (its socket closes, or keepalives time out);
//! broken connections are dropped at check-out or return and the pool opens new ones on demand,
//! so the store recovers by itself once the server is back. Meanwhile check-outs fail within
//! `CHECKOUT_TIMEOUT` as `Unavailable`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::result::{ConnectionError, DatabaseErrorKind, Error as DieselError};
use diesel::ConnectionResult;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolError, PoolableConnection, RecyclingMethod,
};
use diesel_async::AsyncPgConnection;
use domain::{DomainError, DomainResult};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{driver_errors, tls};

/// How long opening one connection may take (TCP connect plus start-up).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a session may sit idle inside a transaction before the server ends it; every
/// transaction of the store is a few statements sent back to back.
pub(crate) const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection before the store counts as unavailable.
pub(crate) const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle time after which TCP keepalives probe the server, so a vanished host is noticed
/// (idle + interval × retries ≈ 40 s) even when nothing is sent.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 5;

/// The pool of diesel-async connections.
type Pool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;
/// A connection checked out of the pool.
pub(crate) type Pooled<'a> = bb8::PooledConnection<'a, AsyncDieselConnectionManager<AsyncPgConnection>>;

/// Where and how to connect: the tokio-postgres settings and the TLS connector they need.
#[derive(Clone)]
pub(crate) struct Target {
    /// Host, database, credentials, timeouts, keepalives, and whether TLS is tried.
    pub(crate) config: tokio_postgres::Config,
    /// The TLS connector for the URL's `sslmode` and `sslrootcert`.
    pub(crate) tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Reads a `DATABASE_URL` into a `Target`; the error says what is wrong with it.
pub(crate) fn target(url: &str) -> Result<Target, String> {
    let (url, tls_settings) = tls::split_url(url)?;
    let config = client_config(&url).map_err(|e| e.to_string())?;
    Ok(Target { config, tls: tls::connector(&tls_settings)? })
}

/// Opens one connection to `url` with the store's timeouts, keepalives and TLS.
pub(crate) fn establish(url: &str) -> BoxFuture<'_, ConnectionResult<AsyncPgConnection>> {
    async move {
        let target = target(url).map_err(ConnectionError::InvalidConnectionUrl)?;
        let (client, connection) = target
            .config
            .connect(target.tls)
            .await
            .map_err(|e| ConnectionError::BadConnection(describe_postgres_error(&e)))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }
    .boxed()
}

/// The tokio-postgres settings for `url`: the URL's own, plus our timeout and keepalives
/// where the URL says nothing.
pub(crate) fn client_config(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("rdev-api");
    }
    // Server-side guards against a client that stops mid-transaction (a SIGSTOPped or hung
    // replica): its open transaction would hold row and project locks that every other
    // replica's claims wait on. The server ends such a session after a few idle seconds,
    // and notices a vanished client within about 25 s (which also frees its presence lock).
    let guards = format!(
        "-c idle_in_transaction_session_timeout={}ms -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 \
         -c tcp_keepalives_count=3",
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
    );
    let options = match config.get_options() {
        Some(own) if !own.is_empty() => format!("{own} {guards}"),
        _ => guards,
    };
    config.options(options);
    config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES);
    Ok(config)
}

/// A tokio-postgres error with its cause: its own `Display` often says only "db error".
pub(crate) fn describe_postgres_error(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{}: {}", db.code().code(), db.message()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

/// Whether connecting works right now, as the last attempt found it. A check-out gives up as
/// soon as an attempt fails, and while attempts fail it waits only `FAILING_CHECKOUT_TIMEOUT`:
/// an outage answers at once instead of after a full check-out timeout per request, and each
/// check-out still lets the pool try again.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health(Arc<HealthState>);

#[derive(Debug, Default)]
struct HealthState {
    failure: Mutex<Option<String>>,
    failed: tokio::sync::Notify,
}

impl Health {
    fn record(&self, failure: Option<String>) {
        let failed = failure.is_some();
        *self.0.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = failure;
        if failed {
            self.0.failed.notify_waiters();
        }
    }

    /// The last connection attempt's failure, if it failed.
    fn failure(&self) -> Option<String> {
        self.0.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// How long a check-out waits while the last connection attempt failed.
const FAILING_CHECKOUT_TIMEOUT: Duration = Duration::from_millis(250);

/// A bounded pool and what it knows about the server's reachability.
#[derive(Clone)]
pub(crate) struct Connections {
    pool: Pool,
    health: Health,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.pool.state();
        f.debug_struct("Connections")
            .field("connections", &state.connections)
            .field("idle", &state.idle_connections)
            .field("failing", &self.health.failure().is_some())
            .finish()
    }
}

impl Connections {
    /// A bounded pool on `url` that opens connections lazily (`pool_size` of at least 1),
    /// starting with `first` when given.
    pub(crate) fn new(url: &str, pool_size: u32, first: Option<AsyncPgConnection>) -> Connections {
        Self::with_session_settings(url, pool_size, first, None)
    }

    /// As `new`, with `settings` (SQL `SET`s) run on every connection as it opens.
    pub(crate) fn with_session_settings(
        url: &str,
        pool_size: u32,
        first: Option<AsyncPgConnection>,
        settings: Option<&'static str>,
    ) -> Connections {
        let health = Health::default();
        let mut config = ManagerConfig::default();
        let recorder = health.clone();
        config.custom_setup = Box::new(move |url| {
            let health = recorder.clone();
            async move {
                let mut opened = establish(url).await;
                if let (Ok(conn), Some(settings)) = (opened.as_mut(), settings) {
                    if let Err(e) = diesel_async::SimpleAsyncConnection::batch_execute(conn, settings).await {
                        opened = Err(diesel::ConnectionError::BadConnection(e.to_string()));
                    }
                }
                health.record(opened.as_ref().err().map(ToString::to_string));
                opened
            }
            .boxed()
        });
        // A check-out only looks at the socket (no round trip): a connection whose server went
        // away is closed by then and replaced; a rare half-open one fails its query as `Unavailable`.
        config.recycling_method = RecyclingMethod::CustomFunction(Box::new(|conn: &mut AsyncPgConnection| {
            let broken = conn.is_broken();
            async move {
                if broken {
                    let closed = Box::new("connection closed".to_owned());
                    Err(DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, closed))
                } else {
                    Ok(())
                }
            }
            .boxed()
        }));
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
        let pool = bb8::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(None)
            .connection_timeout(CHECKOUT_TIMEOUT)
            .error_sink(Box::new(LogErrors))
            .build_unchecked(manager);
        if let Some(conn) = first {
            // Only a full pool refuses a connection, and this one is empty.
            if pool.add(conn).is_err() {
                tracing::debug!("a new pool refused its first connection");
            }
        }
        Connections { pool, health }
    }

    /// A pooled connection, or `Unavailable`.
    pub(crate) async fn get(&self) -> DomainResult<Pooled<'_>> {
        let failing = self.health.failure();
        let wait = if failing.is_some() { FAILING_CHECKOUT_TIMEOUT } else { CHECKOUT_TIMEOUT };
        let attempt_failed = self.health.0.failed.notified();
        tokio::pin!(attempt_failed);
        attempt_failed.as_mut().enable();
        let unavailable = |cause: Option<String>| {
            let cause = cause.map(|c| format!(": {c}")).unwrap_or_default();
            DomainError::Unavailable(format!("no PostgreSQL connection{cause}"))
        };
        tokio::select! {
            got = tokio::time::timeout(wait, self.pool.get()) => match got {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(bb8::RunError::User(e))) => Err(unavailable(Some(e.to_string()))),
                Ok(Err(bb8::RunError::TimedOut)) | Err(_) => {
                    Err(unavailable(Some(self.health.failure().or(failing).unwrap_or_else(|| format!("none free within {wait:?}")))))
                }
            },
            () = &mut attempt_failed => Err(unavailable(self.health.failure())),
        }
    }
}

/// Logs the connection failures the pool meets in the background.
#[derive(Debug, Clone, Copy)]
struct LogErrors;

impl bb8::ErrorSink<PoolError> for LogErrors {
    fn sink(&self, error: PoolError) {
        tracing::warn!(%error, "PostgreSQL connection failed");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<PoolError>> {
        Box::new(*self)
    }
}

/// What can fail inside the store: a query, or a domain rule found mid-transaction (returned
/// as an error so that the transaction rolls back).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// A query failed.
    #[error(transparent)]
    Db(#[from] DieselError),
    /// A domain answer (`NotFound`, `Conflict`, a corrupt row as `Internal`).
    #[error(transparent)]
    Domain(#[from] DomainError),
}

/// Transactions aborted as deadlock victims that are run again before the error is reported.
pub(crate) const DEADLOCK_RETRIES: u32 = 3;

/// Evaluates `$op` (awaiting one transaction or one autocommit statement, a `StoreResult`)
/// again while PostgreSQL aborts it to break a deadlock (or while `$retryable` holds for its
/// error), at most `DEADLOCK_RETRIES` times: an aborted statement committed nothing, so
/// running it again is safe. `$what` names it in the logs. A macro, not a function taking a
/// closure: the operations borrow the connection mutably, and an async closure doing so is
/// not provably `Send` inside `async_trait` methods.
macro_rules! retry_deadlocks {
    ($what:expr, $op:expr) => {
        $crate::connection::retry_deadlocks!($what, $op, $crate::StoreError::is_deadlock)
    };
    ($what:expr, $op:expr, $retryable:expr) => {{
        let mut retries = 0;
        loop {
            match $op {
                Err(e) if $retryable(&e) && retries < $crate::connection::DEADLOCK_RETRIES => {
                    retries += 1;
                    tracing::debug!(retries, what = $what, error = %e, "aborted; running it again");
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use retry_deadlocks;

/// Result of the code that runs on a connection.
pub(crate) type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Whether PostgreSQL aborted the transaction to break a deadlock (SQLSTATE 40P01; nothing
    /// of it committed, so running it again is safe).
    pub(crate) fn is_deadlock(&self) -> bool {
        matches!(self, StoreError::Db(DieselError::DatabaseError(kind, info))
            if driver_errors::sqlstate(kind, info.message()) == Some("40P01"))
    }

    /// Whether the statement was aborted as a deadlock victim, or because a row it referred to
    /// was deleted while it ran (SQLSTATE 23503): in both cases it committed nothing.
    pub(crate) fn is_deadlock_or_lost_reference(&self) -> bool {
        self.is_deadlock()
            || matches!(self, StoreError::Db(DieselError::DatabaseError(kind, info))
                if driver_errors::sqlstate(kind, info.message()) == Some("23503"))
    }

    /// Whether the server refused the statement: an error it reported, so an autocommit
    /// statement committed nothing. A lost connection, or an answer that could not be read,
    /// leaves open whether it committed.
    pub(crate) fn refused_by_server(&self) -> bool {
        matches!(self, StoreError::Db(DieselError::DatabaseError(kind, _)) if !driver_errors::is_transport(kind))
    }

    /// Translates into the domain's words; `what` names the operation for the logs.
    pub(crate) fn into_domain(self, what: &str) -> DomainError {
        match self {
            StoreError::Domain(e) => e,
            StoreError::Db(e) => db_error(e, what),
        }
    }
}

/// Translates a diesel error; `what` names the operation.
pub(crate) fn db_error(e: DieselError, what: &str) -> DomainError {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            DomainError::Conflict(format!("{what}: {}", info.message()))
        }
        DieselError::NotFound => DomainError::NotFound(what.to_owned()),
        DieselError::DatabaseError(kind, info) if is_unavailable(&kind, info.message()) => {
            DomainError::Unavailable(format!("{what}: {}", info.message()))
        }
        DieselError::BrokenTransactionManager => {
            DomainError::Unavailable(format!("{what}: the connection broke inside a transaction"))
        }
        other => DomainError::Internal(format!("{what}: {other}")),
    }
}

/// Whether a database error means "try again later" rather than a bug: the transport failed,
/// or the server answered with a transient SQLSTATE (`driver_errors` says which and how the
/// code is recovered).
fn is_unavailable(kind: &DatabaseErrorKind, message: &str) -> bool {
    driver_errors::is_transport(kind) || driver_errors::sqlstate(kind, message).is_some_and(driver_errors::is_transient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_the_server_reported_prove_a_statement_wrote_nothing() {
        let db = |kind, message: &str| StoreError::Db(DieselError::DatabaseError(kind, Box::new(message.to_owned())));
        assert!(db(DatabaseErrorKind::Unknown, "invalid byte sequence for encoding \"UTF8\": 0x00").refused_by_server());
        assert!(db(DatabaseErrorKind::Unknown, "deadlock detected").refused_by_server());
        assert!(!db(DatabaseErrorKind::ClosedConnection, "connection closed").refused_by_server());
        assert!(!db(DatabaseErrorKind::UnableToSendCommand, "broken pipe").refused_by_server());
        let unreadable = StoreError::Db(DieselError::DeserializationError("bad row".into()));
        assert!(!unreadable.refused_by_server(), "an answer arrived: the statement may have committed");
    }

    #[test]
    fn lost_connections_and_shutdowns_are_unavailable() {
        let closed = DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, Box::new("gone".to_owned()));
        assert!(matches!(db_error(closed, "q"), DomainError::Unavailable(_)));
        let shutdown = DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("terminating connection due to administrator command".to_owned()),
        );
        assert!(matches!(db_error(shutdown, "q"), DomainError::Unavailable(_)));
        let syntax = DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new("syntax error".to_owned()));
        assert!(matches!(db_error(syntax, "q"), DomainError::Internal(_)));
        // A message that only mentions a connection is no lost connection.
        let named = DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("relation \"connection_log\" does not exist".to_owned()),
        );
        assert!(matches!(db_error(named, "q"), DomainError::Internal(_)));
        let sent = DieselError::DatabaseError(DatabaseErrorKind::UnableToSendCommand, Box::new("io".to_owned()));
        assert!(matches!(db_error(sent, "q"), DomainError::Unavailable(_)));
        let serialization =
            DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, Box::new("conflict".to_owned()));
        assert!(matches!(db_error(serialization, "q"), DomainError::Unavailable(_)));
        let taken = DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, Box::new("dup".to_owned()));
        assert!(matches!(db_error(taken, "q"), DomainError::Conflict(_)));
    }

    #[test]
    fn deadlocks_are_known_by_their_sqlstate() {
        let deadlock = |message: &str| {
            StoreError::Db(DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_owned())))
        };
        assert!(deadlock("deadlock detected").is_deadlock());
        assert!(!deadlock("canceling statement due to statement timeout").is_deadlock());
        assert!(!StoreError::Domain(DomainError::Conflict("deadlock detected".to_owned())).is_deadlock());
    }

    #[test]
    fn urls_get_a_connect_timeout_unless_they_set_one() {
        let config = client_config("postgres://rdev@127.0.0.1:5432/rdev").expect("url");
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let own = client_config("postgres://rdev@127.0.0.1/rdev?connect_timeout=9").expect("url");
        assert_eq!(own.get_connect_timeout(), Some(&Duration::from_secs(9)));
        assert!(client_config("mysql://nope").is_err());
    }

    #[test]
    fn sessions_idle_in_a_transaction_are_ended_and_the_urls_own_options_kept() {
        let config = client_config("postgres://rdev@127.0.0.1:5432/rdev").expect("url");
        let options = config.get_options().expect("options");
        assert!(options.contains("-c idle_in_transaction_session_timeout=5000ms"), "{options}");
        assert!(options.contains("-c tcp_keepalives_idle=10"), "{options}");
        let own = client_config("postgres://rdev@127.0.0.1/rdev?options=-c%20search_path%3Drdev").expect("url");
        let options = own.get_options().expect("options");
        assert!(options.starts_with("-c search_path=rdev ") && options.contains("idle_in_transaction"), "{options}");
    }
}
