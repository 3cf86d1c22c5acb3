//! Which SQLite failures mean "unavailable, try again" rather than a bug, decided by SQLite's
//! result code, not by loose wording.
//!
//! diesel reads `sqlite3_extended_errcode` after a failure but keeps it only as a
//! `DatabaseErrorKind` for constraint violations; every other failure becomes `Unknown` with the
//! text of `sqlite3_errmsg`, and diesel gives no access to the raw handle (this crate forbids
//! `unsafe` anyway). For the result codes below that text is SQLite's fixed `sqlite3_errstr` of
//! the code (or that text followed by `: <table or schema>`), so the code is recovered from it
//! (`ERRSTR`, copied from the `aMsg` table in `sqlite3.c`) and the decision is made on the code.

use std::ffi::c_int;

use libsqlite3_sys::{SQLITE_BUSY, SQLITE_CANTOPEN, SQLITE_FULL, SQLITE_IOERR, SQLITE_LOCKED};

/// The messages SQLite gives the result codes that mean the database cannot serve now.
const ERRSTR: [(c_int, &str); 6] = [
    (SQLITE_BUSY, "database is locked"),
    (SQLITE_LOCKED, "database table is locked"),
    (SQLITE_LOCKED, "database schema is locked"),
    (SQLITE_CANTOPEN, "unable to open database file"),
    (SQLITE_IOERR, "disk I/O error"),
    (SQLITE_FULL, "database or disk is full"),
];

/// Whether a primary result code means the database is busy or locked by another connection,
/// cannot be opened, failed to read or write, or is full: conditions a later try may not meet.
pub(crate) fn is_transient(code: c_int) -> bool {
    // Extended codes (SQLITE_BUSY_SNAPSHOT, SQLITE_IOERR_WRITE, …) carry the primary in the low byte.
    matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED | SQLITE_CANTOPEN | SQLITE_IOERR | SQLITE_FULL)
}

/// The primary result code behind a diesel `Unknown` error's message, when it is one of `ERRSTR`.
pub(crate) fn result_code(message: &str) -> Option<c_int> {
    ERRSTR.iter().find(|(_, text)| message.starts_with(text)).map(|(code, _)| *code)
}

/// Whether an `Unknown` SQLite error with this message is transient.
pub(crate) fn is_transient_message(message: &str) -> bool {
    result_code(message).is_some_and(is_transient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};

    #[test]
    fn busy_locked_unopenable_failing_and_full_databases_are_transient() {
        for code in [SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CANTOPEN, SQLITE_IOERR, SQLITE_FULL] {
            assert!(is_transient(code), "{code}");
        }
        assert!(is_transient(libsqlite3_sys::SQLITE_BUSY_SNAPSHOT));
        assert!(is_transient(libsqlite3_sys::SQLITE_IOERR_WRITE));
        for code in [libsqlite3_sys::SQLITE_ERROR, libsqlite3_sys::SQLITE_CONSTRAINT, libsqlite3_sys::SQLITE_CORRUPT] {
            assert!(!is_transient(code), "{code}");
        }
    }

    #[test]
    fn codes_are_recovered_from_sqlites_own_messages_only() {
        assert_eq!(result_code("database is locked"), Some(SQLITE_BUSY));
        assert_eq!(result_code("database table is locked: commands"), Some(SQLITE_LOCKED));
        assert_eq!(result_code("unable to open database file"), Some(SQLITE_CANTOPEN));
        assert_eq!(result_code("database or disk is full"), Some(SQLITE_FULL));
        // A message that merely mentions being busy or locked is no such failure.
        assert_eq!(result_code("no such table: busy"), None);
        assert_eq!(result_code("no such column: locked"), None);
    }

    #[test]
    fn a_real_busy_database_is_recognised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("busy.db");
        let url = path.to_str().expect("utf-8 path");
        let mut holder = SqliteConnection::establish(url).expect("open");
        holder.batch_execute("CREATE TABLE t (x INTEGER); BEGIN IMMEDIATE;").expect("hold the write lock");
        let mut other = SqliteConnection::establish(url).expect("open");
        other.batch_execute("PRAGMA busy_timeout = 0;").expect("no waiting");
        let Err(diesel::result::Error::DatabaseError(_, info)) = other.batch_execute("BEGIN IMMEDIATE;") else {
            panic!("a second writer must fail");
        };
        assert_eq!(result_code(info.message()), Some(SQLITE_BUSY), "{}", info.message());
    }
}
