-- Sliding-window counters are short-lived and rebuilt by the next requests: they need no WAL.
-- A commit that wrote no WAL does not wait for a flush, so a decision no longer waits for the
-- disk while it holds its key's row (every request of one key queued behind that fsync). What
-- this gives up: after a database crash (not a clean restart) or on a promoted standby the
-- counters start empty, so each key may use up to one more window's worth of requests.
ALTER TABLE rate_limiting SET UNLOGGED;
