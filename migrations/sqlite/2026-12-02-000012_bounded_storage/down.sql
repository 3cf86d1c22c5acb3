DROP TABLE job_leases;
DROP INDEX commands_finished_at;
ALTER TABLE projects DROP COLUMN max_queued_commands;
