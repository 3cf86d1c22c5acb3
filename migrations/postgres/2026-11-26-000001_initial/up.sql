-- rdev-api production store: the same data as migrations/sqlite, in PostgreSQL's own types.
-- Ids are UUID (v7, so they sort by creation), times TIMESTAMPTZ (microseconds), settings JSONB.
-- Command output is BYTEA holding UTF-8: PostgreSQL TEXT cannot hold NUL, which programs print.

CREATE TABLE projects (
    id                      UUID        PRIMARY KEY,
    name                    TEXT        NOT NULL UNIQUE,
    image                   TEXT        NOT NULL,
    workdir                 TEXT        NOT NULL,
    env                     JSONB       NOT NULL,  -- object of variables
    resources               JSONB       NOT NULL,  -- {"cpu","memory"}
    max_concurrent_commands INTEGER     NOT NULL CHECK (max_concurrent_commands >= 1),
    default_timeout_seconds INTEGER     NOT NULL CHECK (default_timeout_seconds >= 1),
    created_at              TIMESTAMPTZ NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_keys (
    id                   UUID        PRIMARY KEY,
    name                 TEXT        NOT NULL,
    prefix               TEXT        NOT NULL,
    key_hash             TEXT        NOT NULL UNIQUE,  -- lowercase hex SHA-256 of the secret
    previous_hash        TEXT,                         -- the rotated-out secret, valid until previous_valid_until
    previous_valid_until TIMESTAMPTZ,
    scopes               JSONB       NOT NULL,         -- array of scope names
    projects             JSONB,                        -- array of project names; NULL = every project
    rate_limit_rps       INTEGER,
    expires_at           TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL,
    revoked_at           TIMESTAMPTZ,
    last_used_at         TIMESTAMPTZ,
    CHECK ((previous_hash IS NULL) = (previous_valid_until IS NULL))
);

CREATE INDEX api_keys_previous_hash ON api_keys (previous_hash) WHERE previous_hash IS NOT NULL;

-- The client networks a key may be used from, in the order they were given; none = anywhere.
CREATE TABLE api_key_allowed_ips (
    api_key_id UUID    NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    cidr       CIDR    NOT NULL,
    PRIMARY KEY (api_key_id, position)
);

-- Commands are also the queue: `seq` is the enqueue order, the dequeue order is
-- (priority DESC, seq). A claim sets `fence` from `command_fence`; workers' writes carry it.
-- `event_seq` is the number of the command's last event: appending events updates it under
-- the row lock, so concurrent writers can never number two events alike.
CREATE TABLE commands (
    id                      UUID        PRIMARY KEY,
    seq                     BIGINT      GENERATED ALWAYS AS IDENTITY UNIQUE,
    project_id              UUID        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    project_name            TEXT        NOT NULL,
    spec                    JSONB       NOT NULL,  -- {"argv":[...]} or {"script":"..."}
    env                     JSONB       NOT NULL,
    cwd                     TEXT,
    stdin                   BYTEA,
    timeout_seconds         INTEGER     NOT NULL,
    priority                SMALLINT    NOT NULL,  -- Priority::rank: 3 critical .. 0 low
    status                  TEXT        NOT NULL CHECK (status IN
                                ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'lost')),
    exit_code               INTEGER,
    termination_reason      TEXT,
    error                   TEXT,
    created_by              UUID,
    cancel_requested        BOOLEAN     NOT NULL DEFAULT FALSE,
    queued_at               TIMESTAMPTZ NOT NULL,
    started_at              TIMESTAMPTZ,
    finished_at             TIMESTAMPTZ,
    lease_owner             TEXT,
    lease_expires_at        TIMESTAMPTZ,
    fence                   BIGINT      NOT NULL DEFAULT 0,
    event_seq               BIGINT      NOT NULL DEFAULT 0,
    idempotency_key         TEXT,
    idempotency_fingerprint TEXT,
    stdout                  BYTEA       NOT NULL DEFAULT '',
    stderr                  BYTEA       NOT NULL DEFAULT '',
    stdout_truncated        BOOLEAN     NOT NULL DEFAULT FALSE,
    stderr_truncated        BOOLEAN     NOT NULL DEFAULT FALSE
);

-- The queue itself: only queued rows, in dequeue order, so a claim reads the head and stops.
CREATE INDEX commands_queued ON commands (priority DESC, seq) WHERE status = 'queued';
-- Per-project running counts (the caps) and the reaper's scan touch only running rows.
CREATE INDEX commands_running ON commands (project_id, lease_expires_at) WHERE status = 'running';
CREATE INDEX commands_project_name_id ON commands (project_name, id);
CREATE INDEX commands_status_id ON commands (status, id);
-- One live use of an idempotency key per client; keys older than the retention are cleared.
CREATE UNIQUE INDEX commands_idempotency ON commands (created_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Rises on every claim and never goes back, across every replica.
CREATE SEQUENCE command_fence AS BIGINT;

-- What happened to each command, in order: the SSE stream replays these by `seq`.
CREATE TABLE command_events (
    command_id UUID        NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    seq        BIGINT      NOT NULL,
    kind       TEXT        NOT NULL CHECK (kind IN ('status', 'output', 'exit')),
    stream     TEXT,        -- output only: stdout | stderr
    data       BYTEA,       -- UTF-8: the output text, or the status name
    at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (command_id, seq)
);

-- The hash-chained audit log: hash = SHA-256(prev_hash || canonical record).
CREATE TABLE audit_log (
    seq        BIGINT      PRIMARY KEY,
    id         UUID        NOT NULL UNIQUE,
    at         TIMESTAMPTZ NOT NULL,
    actor      UUID,
    client_ip  TEXT,
    action     TEXT        NOT NULL,
    resource   TEXT        NOT NULL,
    project    TEXT,
    outcome    TEXT        NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    detail     TEXT,
    request_id TEXT,
    trace_id   TEXT,
    prev_hash  BYTEA       NOT NULL CHECK (length(prev_hash) = 32),
    hash       BYTEA       NOT NULL CHECK (length(hash) = 32)
);

CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_project ON audit_log (project, seq);
CREATE INDEX audit_log_at ON audit_log (at);

-- The service only ever appends; refuse anything else at the database level too.
-- (`audit verify` is tested by disabling these triggers, which needs the table's owner.)
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Sliding-window rate limits: one counter per key and fixed window (start in epoch seconds).
CREATE TABLE rate_limiting (
    key          TEXT   NOT NULL,
    window_start BIGINT NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (key, window_start)
);

-- One rate-limit decision in one round trip, atomic across replicas: the current window's row
-- is locked while the estimate `previous * overlap + current + 1 <= limit` is made (the same
-- float8 arithmetic, in the same order, as `RateLimitPolicy::decide`) and counted if allowed.
-- Returns the counts the decision saw, so the caller derives the headers from them.
CREATE FUNCTION rate_limit_acquire(
    p_key TEXT, p_current_start BIGINT, p_previous_start BIGINT, p_overlap DOUBLE PRECISION, p_limit BIGINT
) RETURNS TABLE (previous BIGINT, current BIGINT, allowed BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    v_previous BIGINT;
    v_current  BIGINT;
    v_allowed  BOOLEAN;
BEGIN
    INSERT INTO rate_limiting AS r (key, window_start, count) VALUES (p_key, p_current_start, 0)
        ON CONFLICT (key, window_start) DO NOTHING;
    SELECT r.count INTO v_current FROM rate_limiting r
        WHERE r.key = p_key AND r.window_start = p_current_start FOR UPDATE;
    SELECT COALESCE(MAX(r.count), 0) INTO v_previous FROM rate_limiting r
        WHERE r.key = p_key AND r.window_start = p_previous_start;
    v_allowed := v_previous::DOUBLE PRECISION * p_overlap + v_current::DOUBLE PRECISION + 1.0
        <= p_limit::DOUBLE PRECISION;
    IF v_allowed THEN
        UPDATE rate_limiting r SET count = r.count + 1 WHERE r.key = p_key AND r.window_start = p_current_start;
    END IF;
    -- Windows before the previous one no longer weigh in on any decision.
    DELETE FROM rate_limiting r WHERE r.key = p_key AND r.window_start < p_previous_start;
    RETURN QUERY SELECT v_previous, v_current, v_allowed;
END
$$;

-- Queue workers (one per replica) and their last heartbeat, for /v1/queue capacity.
CREATE TABLE workers (
    id        TEXT        PRIMARY KEY,
    capacity  INTEGER     NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL
);
