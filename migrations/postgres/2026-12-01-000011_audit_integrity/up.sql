-- Issue 11: a hang-up is its own outcome, and signed checkpoints anchor the chain.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_outcome_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_outcome_check
    CHECK (outcome IN ('success', 'denied', 'failure', 'client_closed'));

-- Signed checkpoints: HMAC-SHA256 over (seq, hash, count) with a key the database never holds.
CREATE TABLE audit_checkpoints (
    seq   BIGINT      PRIMARY KEY,
    hash  BYTEA       NOT NULL CHECK (length(hash) = 32),
    count BIGINT      NOT NULL,
    at    TIMESTAMPTZ NOT NULL,
    mac   BYTEA       NOT NULL CHECK (length(mac) = 32)
);

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
