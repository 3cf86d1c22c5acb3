//! How driver and pool failures become `DomainError`s.

use diesel::r2d2::PoolError;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use domain::DomainError;

use crate::driver_errors;

/// What can fail inside the store: the driver, the pool, or a domain rule found mid-transaction
/// (returned as an error so that the transaction rolls back).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// A query failed.
    #[error(transparent)]
    Db(#[from] DieselError),
    /// No connection could be had.
    #[error(transparent)]
    Pool(PoolError),
    /// A domain answer (`NotFound`, `Conflict`, a corrupt row as `Internal`).
    #[error(transparent)]
    Domain(#[from] DomainError),
}

/// Result of the code that runs on a connection.
pub(crate) type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Translates into the domain's words; `what` names the operation for the logs.
    pub(crate) fn into_domain(self, what: &str) -> DomainError {
        match self {
            StoreError::Domain(e) => e,
            StoreError::Pool(e) => pool_error(e),
            StoreError::Db(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => {
                DomainError::Conflict(format!("{what}: {}", info.message()))
            }
            StoreError::Db(DieselError::NotFound) => DomainError::NotFound(what.to_owned()),
            StoreError::Db(e) if is_unavailable(&e) => DomainError::Unavailable(format!("{what}: {e}")),
            StoreError::Db(e) => DomainError::Internal(format!("{what}: {e}")),
        }
    }
}

/// A connection could not be had from the pool.
pub(crate) fn pool_error(e: PoolError) -> DomainError {
    DomainError::Unavailable(format!("no SQLite connection: {e}"))
}

/// Whether a diesel error means "try again later": a transient SQLite result code
/// (`driver_errors` says which and how the code is recovered).
fn is_unavailable(e: &DieselError) -> bool {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            driver_errors::is_transient_message(info.message())
        }
        // A COMMIT that met a busy database, whose rollback failed too.
        DieselError::RollbackErrorOnCommit { commit_error, .. } => is_unavailable(commit_error),
        _ => false,
    }
}

/// Translates a failed migration run. diesel_migrations returns a bare diesel error for its own
/// bookkeeping, but wraps a failing migration's in a private `RunMigrationsError` that gives
/// only its text ("Failed to run <name> with: <message>"), so there the message is read back.
pub(crate) fn migration_error(e: &(dyn std::error::Error + 'static), what: &str) -> DomainError {
    let transient = match e.downcast_ref::<DieselError>() {
        Some(db) => is_unavailable(db),
        None => {
            let text = e.to_string();
            text.split_once(" with: ").is_some_and(|(_, message)| driver_errors::is_transient_message(message))
        }
    };
    if transient {
        DomainError::Unavailable(format!("{what}: {e}"))
    } else {
        DomainError::Internal(format!("{what}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(message: &str) -> DieselError {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_owned()))
    }

    #[test]
    fn busy_and_locked_databases_are_unavailable() {
        let what = |e: DieselError| StoreError::Db(e).into_domain("q");
        assert!(matches!(what(unknown("database is locked")), DomainError::Unavailable(_)));
        assert!(matches!(what(unknown("unable to open database file")), DomainError::Unavailable(_)));
        assert!(matches!(what(unknown("no such table: projects")), DomainError::Internal(_)));
        assert!(matches!(what(unknown("no such table: busy")), DomainError::Internal(_)));
        let taken = DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, Box::new("dup".to_owned()));
        assert!(matches!(what(taken), DomainError::Conflict(_)));
    }

    #[test]
    fn migrations_that_meet_a_busy_database_are_unavailable() {
        let bare: Box<dyn std::error::Error + Send + Sync> = Box::new(unknown("database is locked"));
        assert!(matches!(migration_error(bare.as_ref(), "m"), DomainError::Unavailable(_)));
        let broken: Box<dyn std::error::Error + Send + Sync> = Box::new(unknown("near \"SELEC\": syntax error"));
        assert!(matches!(migration_error(broken.as_ref(), "m"), DomainError::Internal(_)));
        let wrapped: Box<dyn std::error::Error + Send + Sync> =
            "Failed to run 2026_init with: database is locked".into();
        assert!(matches!(migration_error(wrapped.as_ref(), "m"), DomainError::Unavailable(_)));
    }
}
