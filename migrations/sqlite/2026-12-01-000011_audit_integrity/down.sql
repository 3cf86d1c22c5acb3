DROP TABLE audit_checkpoints;

DROP TRIGGER audit_log_no_update;
DROP TRIGGER audit_log_no_delete;
CREATE TABLE audit_log_old (
    seq        INTEGER PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    at         BIGINT  NOT NULL,
    actor      TEXT,
    client_ip  TEXT,
    action     TEXT    NOT NULL,
    resource   TEXT    NOT NULL,
    project    TEXT,
    outcome    TEXT    NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    detail     TEXT,
    request_id TEXT,
    trace_id   TEXT,
    prev_hash  BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash       BLOB    NOT NULL CHECK (length(hash) = 32)
);
-- client_closed records cannot go back; the down migration refuses (CHECK) if any exist.
INSERT INTO audit_log_old SELECT * FROM audit_log;
DROP TABLE audit_log;
ALTER TABLE audit_log_old RENAME TO audit_log;
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
