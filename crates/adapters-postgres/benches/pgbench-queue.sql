-- The queue cycle of crates/adapters-postgres/src/queue.rs as plain SQL, the same statements
-- the adapter sends: claim the head with FOR UPDATE SKIP LOCKED under its project's row lock,
-- start it with a fence, its event and its webhook event (one transaction); then finish it under
-- that fence with its two events and its webhook event (one statement). No subscription exists
-- here, so the webhook inserts write nothing, in the adapter as here. One pgbench transaction is
-- one command. Run by benches/queue.rs (pgbench -n -M prepared -f this-file) as the baseline.
-- The colons of the time formats are quoted because pgbench reads a colon and a name as a variable.
BEGIN;
SELECT c.id AS cid, c.project_id AS pid, p.max_concurrent_commands AS cap
FROM commands c JOIN projects p ON p.id = c.project_id
WHERE c.status = 'queued'
  AND NOT (c.project_id = ANY('{}'::uuid[]))
  AND c.project_id NOT IN (
      SELECT r.project_id FROM commands r JOIN projects f ON f.id = r.project_id
      WHERE r.status = 'running'
      GROUP BY r.project_id, f.max_concurrent_commands
      HAVING count(*) >= f.max_concurrent_commands)
ORDER BY c.priority DESC, c.seq
LIMIT 1
FOR UPDATE OF c SKIP LOCKED
FOR NO KEY UPDATE OF p \gset
WITH claimed AS (
    UPDATE commands SET status = 'running', started_at = now(), lease_owner = 'pgbench',
        lease_expires_at = now() + interval '60 seconds', fence = nextval('command_fence'),
        event_seq = event_seq + 1
    WHERE id = :cid
      AND (SELECT count(*) FROM commands r WHERE r.project_id = :pid AND r.status = 'running') < :cap
    RETURNING *
), started AS (
    INSERT INTO command_events (command_id, seq, kind, stream, data, at)
    SELECT id, event_seq, 'status', NULL, convert_to('running', 'UTF8'), now() FROM claimed
), announced AS (
    INSERT INTO webhook_events (id, event_type, project, target_webhook, payload, created_at)
    SELECT gen_random_uuid(), 'command.' || CASE s.status WHEN 'running' THEN 'started' ELSE s.status END,
        s.project_name, NULL,
        json_build_object('type', 'command.' || CASE s.status WHEN 'running' THEN 'started' ELSE s.status END,
            'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":"MI":"SS.US"Z"'),
            'data', json_build_object('id', s.id, 'project', s.project_name, 'status', s.status,
                'exit_code', s.exit_code, 'termination_reason', s.termination_reason, 'error', left(s.error, 4096),
                'priority', (ARRAY['low', 'normal', 'high', 'critical'])[s.priority + 1],
                'queued_at', to_char(s.queued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":"MI":"SS.US"Z"'),
                'started_at', to_char(s.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":"MI":"SS.US"Z"'),
                'finished_at', to_char(s.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":"MI":"SS.US"Z"')))::text,
        now()
    FROM claimed s WHERE EXISTS (SELECT 1 FROM webhooks WHERE enabled)
)
SELECT fence FROM claimed \gset
COMMIT;
WITH done AS (
    UPDATE commands SET status = 'succeeded', exit_code = 0, termination_reason = 'exited', error = NULL,
        finished_at = now(), lease_owner = NULL, lease_expires_at = NULL, event_seq = event_seq + 2,
        stdout = '', stderr = '', stdout_truncated = false, stderr_truncated = false
    WHERE id = :cid AND status = 'running' AND fence = :fence
    RETURNING *
), ended AS (
    INSERT INTO command_events (command_id, seq, kind, stream, data, at)
    SELECT id, event_seq - 1, 'status', NULL, convert_to(status, 'UTF8'), finished_at FROM done
    UNION ALL
    SELECT id, event_seq, 'exit', NULL, NULL, finished_at FROM done
), announced AS (
    INSERT INTO webhook_events (id, event_type, project, target_webhook, payload, created_at)
    SELECT gen_random_uuid(), 'command.' || CASE s.status WHEN 'running' THEN 'started' ELSE s.status END,
        s.project_name, NULL,
        json_build_object('type', 'command.' || CASE s.status WHEN 'running' THEN 'started' ELSE s.status END,
            'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":"MI":"SS.US"Z"'),
            'data', json_build_object('id', s.id, 'project', s.project_name, 'status', s.status,
                'exit_code', s.exit_code, 'termination_reason', s.termination_reason, 'error', left(s.error, 4096),
                'priority', (ARRAY['low', 'normal', 'high', 'critical'])[s.priority + 1],
                'queued_at', to_char(s.queued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":"MI":"SS.US"Z"'),
                'started_at', to_char(s.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":"MI":"SS.US"Z"'),
                'finished_at', to_char(s.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":"MI":"SS.US"Z"')))::text,
        now()
    FROM done s WHERE EXISTS (SELECT 1 FROM webhooks WHERE enabled)
)
SELECT id FROM done;
