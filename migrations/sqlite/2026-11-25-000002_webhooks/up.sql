-- Webhooks (DESIGN.md §2–§3): subscriptions, the outbox of events, and their deliveries with
-- every attempt. Same conventions as the initial migration: INTEGER microsecond timestamps,
-- UUID text ids, JSON text columns.

CREATE TABLE webhooks (
    id                   TEXT    PRIMARY KEY NOT NULL,
    url                  TEXT    NOT NULL,
    events               TEXT    NOT NULL,  -- JSON array of event type names
    projects             TEXT,              -- JSON array of project names; NULL = every project
    secret               TEXT    NOT NULL,  -- whsec_…: signing needs the key itself, not a hash
    previous_secret      TEXT,              -- the rotated-out secret, still signing until previous_valid_until
    previous_valid_until BIGINT,
    enabled              BOOLEAN NOT NULL,
    disabled_reason      TEXT,
    failing_since        BIGINT,            -- start of the current run of failed attempts
    created_at           BIGINT  NOT NULL,
    updated_at           BIGINT  NOT NULL,
    CHECK ((previous_secret IS NULL) = (previous_valid_until IS NULL))
);

-- The outbox: written in the same transaction as the change that caused the event; `seq` is
-- the order fan-out takes them in, `dispatched_at` is set once deliveries exist for it.
CREATE TABLE webhook_events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    event_type     TEXT    NOT NULL,
    project        TEXT,
    target_webhook TEXT,             -- pings: the only subscription it goes to
    payload        TEXT    NOT NULL, -- the exact JSON body sent
    created_at     BIGINT  NOT NULL,
    dispatched_at  BIGINT
);

CREATE INDEX webhook_events_undispatched ON webhook_events (seq) WHERE dispatched_at IS NULL;

-- One event on its way to one subscription. A lease (owner, expiry) fenced by a counter that
-- rises on every lease keeps two dispatchers from sending one delivery at once.
CREATE TABLE webhook_deliveries (
    id               TEXT    PRIMARY KEY NOT NULL,
    webhook_id       TEXT    NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         TEXT    NOT NULL REFERENCES webhook_events (id),
    event_type       TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT,
    last_attempt_at  BIGINT,
    redelivery_of    TEXT,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    fence            BIGINT  NOT NULL DEFAULT 0,
    created_at       BIGINT  NOT NULL
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

CREATE TABLE webhook_attempts (
    delivery_id      TEXT    NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    number           INTEGER NOT NULL,
    at               BIGINT  NOT NULL,
    status_code      INTEGER,
    latency_ms       INTEGER NOT NULL,
    response_snippet TEXT,            -- at most the first 20 KiB of the answer
    error            TEXT,
    PRIMARY KEY (delivery_id, number)
) WITHOUT ROWID;

INSERT INTO counters (name, value) VALUES ('webhook_fence', 0);
