-- rdev-api embedded store. Timestamps are INTEGER microseconds since the Unix epoch (UTC),
-- ids are lowercase hyphenated UUID text (v7, so they sort by creation), JSON columns are TEXT.

CREATE TABLE projects (
    id                      TEXT    PRIMARY KEY NOT NULL,
    name                    TEXT    NOT NULL UNIQUE,
    image                   TEXT    NOT NULL,
    workdir                 TEXT    NOT NULL,
    env                     TEXT    NOT NULL,  -- JSON object of variables
    resources               TEXT    NOT NULL,  -- JSON {"cpu","memory"}
    max_concurrent_commands INTEGER NOT NULL CHECK (max_concurrent_commands >= 1),
    default_timeout_seconds INTEGER NOT NULL CHECK (default_timeout_seconds >= 1),
    created_at              BIGINT  NOT NULL,
    updated_at              BIGINT  NOT NULL
);

CREATE TABLE api_keys (
    id                   TEXT    PRIMARY KEY NOT NULL,
    name                 TEXT    NOT NULL,
    prefix               TEXT    NOT NULL,
    key_hash             TEXT    NOT NULL UNIQUE,  -- lowercase hex SHA-256 of the secret
    previous_hash        TEXT,                     -- the rotated-out secret, valid until previous_valid_until
    previous_valid_until BIGINT,
    scopes               TEXT    NOT NULL,         -- JSON array of scope names
    projects             TEXT,                     -- JSON array of project names; NULL = every project
    rate_limit_rps       INTEGER,
    expires_at           BIGINT,
    created_at           BIGINT  NOT NULL,
    revoked_at           BIGINT,
    last_used_at         BIGINT,
    CHECK ((previous_hash IS NULL) = (previous_valid_until IS NULL))
);

CREATE INDEX api_keys_previous_hash ON api_keys (previous_hash) WHERE previous_hash IS NOT NULL;

-- The client networks a key may be used from, in the order they were given; none = anywhere.
CREATE TABLE api_key_allowed_ips (
    api_key_id TEXT    NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    cidr       TEXT    NOT NULL,
    PRIMARY KEY (api_key_id, position)
) WITHOUT ROWID;

-- Commands are also the queue: `seq` is the enqueue order, the dequeue order is
-- (priority DESC, seq). A claim sets `fence` from the counter below; writes carry it.
CREATE TABLE commands (
    seq                     INTEGER PRIMARY KEY AUTOINCREMENT,
    id                      TEXT    NOT NULL UNIQUE,
    project_id              TEXT    NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    project_name            TEXT    NOT NULL,
    spec                    TEXT    NOT NULL,  -- JSON {"argv":[...]} or {"script":"..."}
    env                     TEXT    NOT NULL,  -- JSON object
    cwd                     TEXT,
    stdin                   TEXT,
    timeout_seconds         INTEGER NOT NULL,
    priority                SMALLINT NOT NULL,  -- Priority::rank: 3 critical .. 0 low
    status                  TEXT    NOT NULL CHECK (status IN
                                ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'lost')),
    exit_code               INTEGER,
    termination_reason      TEXT,
    error                   TEXT,
    created_by              TEXT,
    cancel_requested        BOOLEAN NOT NULL DEFAULT 0,
    queued_at               BIGINT  NOT NULL,
    started_at              BIGINT,
    finished_at             BIGINT,
    lease_owner             TEXT,
    lease_expires_at        BIGINT,
    fence                   BIGINT  NOT NULL DEFAULT 0,
    idempotency_key         TEXT,
    idempotency_fingerprint TEXT,
    stdout                  TEXT    NOT NULL DEFAULT '',
    stderr                  TEXT    NOT NULL DEFAULT '',
    stdout_truncated        BOOLEAN NOT NULL DEFAULT 0,
    stderr_truncated        BOOLEAN NOT NULL DEFAULT 0
);

CREATE INDEX commands_dequeue ON commands (status, priority DESC, seq);
CREATE INDEX commands_project_status ON commands (project_id, status);
CREATE INDEX commands_project_name_id ON commands (project_name, id);
CREATE INDEX commands_status_id ON commands (status, id);
-- One live use of an idempotency key per client; keys older than the retention are cleared.
CREATE UNIQUE INDEX commands_idempotency ON commands (created_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- What happened to each command, in order: the SSE stream replays these by `seq`.
CREATE TABLE command_events (
    command_id TEXT   NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    kind       TEXT   NOT NULL CHECK (kind IN ('status', 'output', 'exit')),
    stream     TEXT,           -- output only: stdout | stderr
    data       TEXT,           -- output text, or the status name
    at         BIGINT NOT NULL,
    PRIMARY KEY (command_id, seq)
) WITHOUT ROWID;

-- Store-wide counters; `fence` rises on every claim and never goes back, even when the
-- command that held the highest fence is deleted.
CREATE TABLE counters (
    name  TEXT   PRIMARY KEY NOT NULL,
    value BIGINT NOT NULL
) WITHOUT ROWID;

INSERT INTO counters (name, value) VALUES ('fence', 0);

-- The hash-chained audit log: hash = SHA-256(prev_hash || canonical record).
CREATE TABLE audit_log (
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

CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_project ON audit_log (project, seq);
CREATE INDEX audit_log_at ON audit_log (at);

-- The service only ever appends; refuse anything else at the database level too.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

-- Sliding-window rate limits: one counter per key and fixed window (start in epoch seconds).
CREATE TABLE rate_limiting (
    key          TEXT   NOT NULL,
    window_start BIGINT NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (key, window_start)
) WITHOUT ROWID;

-- Queue workers (one per replica) and their last heartbeat, for /v1/queue capacity.
CREATE TABLE workers (
    id        TEXT    PRIMARY KEY NOT NULL,
    capacity  INTEGER NOT NULL,
    last_seen BIGINT  NOT NULL
) WITHOUT ROWID;
