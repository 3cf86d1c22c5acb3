-- A project's cap on queued commands; NULL: the server's MAX_QUEUED_COMMANDS.
ALTER TABLE projects ADD COLUMN max_queued_commands INTEGER
    CHECK (max_queued_commands IS NULL OR max_queued_commands BETWEEN 1 AND 100000);

-- Enqueue counts a project's queued commands under its enqueue lock.
CREATE INDEX commands_project_queued ON commands (project_id) WHERE status = 'queued';

-- Retention finds finished commands by their end time.
CREATE INDEX commands_finished_at ON commands (finished_at) WHERE finished_at IS NOT NULL;

-- Replica-wide jobs (retention) run on one replica at a time: whoever holds the lease.
CREATE TABLE job_leases (
    name       TEXT        PRIMARY KEY,
    owner      TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
