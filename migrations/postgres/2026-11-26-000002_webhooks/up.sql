-- Webhooks (DESIGN.md §2–§3): subscriptions, the outbox of events, and their deliveries with
-- every attempt; the same data as migrations/sqlite/2026-11-25-000002_webhooks in PostgreSQL's
-- own types. Several replicas dispatch from one database: leases are taken with
-- FOR UPDATE SKIP LOCKED and fenced by `webhook_fence`, which rises on every lease.

CREATE TABLE webhooks (
    id                   UUID        PRIMARY KEY,
    url                  TEXT        NOT NULL,
    events               JSONB       NOT NULL,  -- array of event type names
    projects             JSONB,                 -- array of project names; NULL = every project
    secret               TEXT        NOT NULL,  -- whsec_…: signing needs the key itself, not a hash
    previous_secret      TEXT,                  -- the rotated-out secret, still signing until previous_valid_until
    previous_valid_until TIMESTAMPTZ,
    enabled              BOOLEAN     NOT NULL,
    disabled_reason      TEXT,
    failing_since        TIMESTAMPTZ,           -- start of the current run of failed attempts
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL,
    CHECK ((previous_secret IS NULL) = (previous_valid_until IS NULL))
);

-- Command transitions ask "is any subscription enabled?" on every write.
CREATE INDEX webhooks_enabled ON webhooks (id) WHERE enabled;

-- The outbox: written in the same transaction as the change that caused the event; `seq` is
-- the order fan-out takes them in, `dispatched_at` is set once deliveries exist for it.
-- `payload` is TEXT, not JSONB: it is the exact body that gets signed, byte for byte.
CREATE TABLE webhook_events (
    seq            BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             UUID        NOT NULL UNIQUE,
    event_type     TEXT        NOT NULL,
    project        TEXT,
    target_webhook UUID,                   -- pings: the only subscription it goes to
    payload        TEXT        NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    dispatched_at  TIMESTAMPTZ
);

CREATE INDEX webhook_events_undispatched ON webhook_events (seq) WHERE dispatched_at IS NULL;

-- One event on its way to one subscription. A lease (owner, expiry) fenced by a number from
-- `webhook_fence` keeps two dispatchers from sending one delivery at once.
CREATE TABLE webhook_deliveries (
    id               UUID        PRIMARY KEY,
    webhook_id       UUID        NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         UUID        NOT NULL REFERENCES webhook_events (id),
    event_type       TEXT        NOT NULL,
    status           TEXT        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'dead')),
    attempts         INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    last_attempt_at  TIMESTAMPTZ,
    redelivery_of    UUID,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    fence            BIGINT      NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL
);

-- Leasing scans pending deliveries in due order.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (created_at) WHERE status <> 'pending';

CREATE TABLE webhook_attempts (
    delivery_id      UUID        NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    number           INTEGER     NOT NULL,
    at               TIMESTAMPTZ NOT NULL,
    status_code      INTEGER,
    latency_ms       BIGINT      NOT NULL,
    response_snippet TEXT,                  -- at most the first 20 KiB of the answer
    error            TEXT,
    PRIMARY KEY (delivery_id, number)
);

CREATE SEQUENCE webhook_fence;
