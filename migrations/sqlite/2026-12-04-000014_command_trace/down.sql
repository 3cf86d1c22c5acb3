ALTER TABLE commands DROP COLUMN tracestate;
ALTER TABLE commands DROP COLUMN traceparent;
