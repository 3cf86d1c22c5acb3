//! Which PostgreSQL failures mean "unavailable, try again" rather than a bug, decided by
//! SQLSTATE, not by the wording of messages.
//!
//! diesel-async turns a tokio-postgres error into `diesel::result::Error` and keeps the SQLSTATE
//! only as a `DatabaseErrorKind` for eight codes (unique, foreign key, restrict, exclusion, not
//! null and check violations, 40001 serialization failure, 25006 read-only transaction); every
//! other server error becomes `Unknown` with just its message (the `DbError` it wraps is private
//! and `DatabaseErrorInformation` has no code). Errors without a SQLSTATE (socket closed, I/O,
//! protocol) become `UnableToSendCommand`. So a hidden code is recovered from the server's
//! primary message for the few codes below, matched exactly or as a prefix as PostgreSQL words
//! them (`SERVER_MESSAGES`); that fallback needs the server's `lc_messages` to be English
//! (a translated message is classified `Internal`, as any unknown failure is).

use diesel::result::DatabaseErrorKind;

/// A SQLSTATE: five characters, the first two its class.
pub(crate) type SqlState = &'static str;

/// Primary messages of the transient SQLSTATEs that diesel-async reports as `Unknown`, from
/// PostgreSQL's sources (the `errmsg` of each `ereport` with that code); a message matches when
/// it starts with the text.
const SERVER_MESSAGES: [(SqlState, &str); 17] = [
    ("57P01", "terminating connection due to administrator command"),
    ("57P02", "terminating connection because of crash of another server process"),
    ("57P03", "the database system is starting up"),
    ("57P03", "the database system is shutting down"),
    ("57P03", "the database system is in recovery mode"),
    ("57P03", "the database system is not yet accepting connections"),
    ("57P03", "the database system is not accepting connections"),
    ("40P01", "deadlock detected"),
    ("53300", "sorry, too many clients already"),
    ("53300", "remaining connection slots are reserved"),
    ("53200", "out of memory"),
    ("55P03", "could not obtain lock on "),
    ("55P03", "canceling statement due to lock timeout"),
    ("25P03", "terminating connection due to idle-in-transaction timeout"),
    ("57P05", "terminating connection due to idle-session timeout"),
    ("57014", "canceling statement due to statement timeout"),
    ("57014", "canceling statement due to user request"),
];

/// Whether a SQLSTATE means the server cannot serve this now but may soon: a lost connection
/// (class 08), an administrator's or crash shutdown or a server not accepting connections
/// (57P01-57P03), a session ended for idling (57P05; 25P03 inside a transaction), a
/// transaction aborted by a conflict that a retry resolves (40001, 40P01), insufficient
/// resources (class 53), a lock not available in time (55P03) or a cancelled statement (57014).
pub(crate) fn is_transient(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53"))
        || matches!(code, "57P01" | "57P02" | "57P03" | "57P05" | "40001" | "40P01" | "55P03" | "25P03" | "57014")
}

/// The SQLSTATE of a server error as diesel-async reports it: from its kind where diesel-async
/// kept the code, from `SERVER_MESSAGES` where it did not; `None` when it is not known.
pub(crate) fn sqlstate(kind: &DatabaseErrorKind, message: &str) -> Option<SqlState> {
    match kind {
        DatabaseErrorKind::SerializationFailure => Some("40001"),
        DatabaseErrorKind::UniqueViolation => Some("23505"),
        DatabaseErrorKind::ForeignKeyViolation => Some("23503"),
        DatabaseErrorKind::NotNullViolation => Some("23502"),
        DatabaseErrorKind::CheckViolation => Some("23514"),
        DatabaseErrorKind::RestrictViolation => Some("23001"),
        DatabaseErrorKind::ExclusionViolation => Some("23P01"),
        DatabaseErrorKind::ReadOnlyTransaction => Some("25006"),
        // The code is hidden: only the message is left.
        DatabaseErrorKind::Unknown => {
            SERVER_MESSAGES.iter().find(|(_, text)| message.starts_with(text)).map(|(code, _)| *code)
        }
        _ => None,
    }
}

/// Whether the failure lies in the transport, not in the statement: the connection is closed or
/// could not carry the command (diesel-async's kinds for tokio-postgres errors without a SQLSTATE).
pub(crate) fn is_transport(kind: &DatabaseErrorKind) -> bool {
    matches!(kind, DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::error::SqlState as Code;

    #[test]
    fn transient_codes_are_chosen_by_class_and_code() {
        for code in [
            Code::CONNECTION_EXCEPTION,
            Code::CONNECTION_FAILURE,
            Code::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            Code::PROTOCOL_VIOLATION,
            Code::ADMIN_SHUTDOWN,
            Code::CRASH_SHUTDOWN,
            Code::CANNOT_CONNECT_NOW,
            Code::T_R_SERIALIZATION_FAILURE,
            Code::T_R_DEADLOCK_DETECTED,
            Code::INSUFFICIENT_RESOURCES,
            Code::DISK_FULL,
            Code::OUT_OF_MEMORY,
            Code::TOO_MANY_CONNECTIONS,
            Code::LOCK_NOT_AVAILABLE,
            Code::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            Code::QUERY_CANCELED,
        ] {
            assert!(is_transient(code.code()), "{}", code.code());
        }
        for code in [
            Code::SYNTAX_ERROR,
            Code::UNIQUE_VIOLATION,
            Code::UNDEFINED_TABLE,
            Code::INSUFFICIENT_PRIVILEGE,
            Code::READ_ONLY_SQL_TRANSACTION,
            Code::RAISE_EXCEPTION,
            Code::T_R_INTEGRITY_CONSTRAINT_VIOLATION,
            Code::INVALID_TEXT_REPRESENTATION,
        ] {
            assert!(!is_transient(code.code()), "{}", code.code());
        }
    }

    #[test]
    fn hidden_codes_are_recovered_from_the_servers_own_words_only() {
        let unknown = |message| sqlstate(&DatabaseErrorKind::Unknown, message);
        assert_eq!(unknown("terminating connection due to administrator command"), Some("57P01"));
        assert_eq!(unknown("the database system is shutting down"), Some("57P03"));
        assert_eq!(unknown("deadlock detected"), Some("40P01"));
        assert_eq!(unknown("could not obtain lock on row in relation \"commands\""), Some("55P03"));
        assert_eq!(unknown("canceling statement due to statement timeout"), Some("57014"));
        assert_eq!(unknown("terminating connection due to idle-in-transaction timeout"), Some("25P03"));
        assert_eq!(unknown("sorry, too many clients already"), Some("53300"));
        // Messages that merely mention a connection or a deadlock say nothing of the code.
        assert_eq!(unknown("relation \"connection\" does not exist"), None);
        assert_eq!(unknown("invalid input syntax for type uuid: \"deadlock detected\""), None);
        assert_eq!(unknown("syntax error at or near \"connection\""), None);
    }

    #[test]
    fn kinds_that_kept_their_code_need_no_message() {
        assert_eq!(sqlstate(&DatabaseErrorKind::SerializationFailure, "anything"), Some("40001"));
        assert_eq!(sqlstate(&DatabaseErrorKind::UniqueViolation, "deadlock detected"), Some("23505"));
        assert_eq!(sqlstate(&DatabaseErrorKind::ClosedConnection, "deadlock detected"), None);
        assert!(is_transport(&DatabaseErrorKind::UnableToSendCommand));
        assert!(!is_transport(&DatabaseErrorKind::Unknown));
    }

    #[test]
    fn every_listed_message_maps_to_a_transient_code() {
        for (code, text) in SERVER_MESSAGES {
            assert!(is_transient(code), "{code}");
            assert_eq!(sqlstate(&DatabaseErrorKind::Unknown, text), Some(code), "{text}");
        }
    }
}
