-- Issue 11: a hang-up is its own outcome, and signed checkpoints anchor the chain.

-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt with every row,
-- its indexes and its append-only triggers (dropped first so the copy-and-drop is allowed).
DROP TRIGGER audit_log_no_update;
DROP TRIGGER audit_log_no_delete;

CREATE TABLE audit_log_new (
    seq        INTEGER PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    at         BIGINT  NOT NULL,
    actor      TEXT,
    client_ip  TEXT,
    action     TEXT    NOT NULL,
    resource   TEXT    NOT NULL,
    project    TEXT,
    outcome    TEXT    NOT NULL CHECK (outcome IN ('success', 'denied', 'failure', 'client_closed')),
    detail     TEXT,
    request_id TEXT,
    trace_id   TEXT,
    prev_hash  BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash       BLOB    NOT NULL CHECK (length(hash) = 32)
);
INSERT INTO audit_log_new SELECT * FROM audit_log;
DROP TABLE audit_log;
ALTER TABLE audit_log_new RENAME TO audit_log;

CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_project ON audit_log (project, seq);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

-- Signed checkpoints: HMAC-SHA256 over (seq, hash, count) with a key the database never holds.
CREATE TABLE audit_checkpoints (
    seq   INTEGER PRIMARY KEY,
    hash  BLOB    NOT NULL CHECK (length(hash) = 32),
    count BIGINT  NOT NULL,
    at    BIGINT  NOT NULL,
    mac   BLOB    NOT NULL CHECK (length(mac) = 32)
);

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;

CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;
