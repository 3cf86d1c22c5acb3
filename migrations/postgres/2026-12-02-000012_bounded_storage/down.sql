DROP TABLE job_leases;
DROP INDEX commands_finished_at;
DROP INDEX commands_project_queued;
ALTER TABLE projects DROP COLUMN max_queued_commands;
