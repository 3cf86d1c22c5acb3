-- Issue 11: failed authentications are aggregated, one record per address, reason and window;
-- `count` says how many occurrences a record stands for (1 for every other record).
ALTER TABLE audit_log ADD COLUMN count BIGINT NOT NULL DEFAULT 1 CHECK (count >= 1);
