-- Issue 13: the W3C trace context of the request that queued a command, so the replica that
-- claims it continues the same trace. NULL when tracing was off or the caller sent none.
ALTER TABLE commands ADD COLUMN traceparent TEXT;
ALTER TABLE commands ADD COLUMN tracestate TEXT;
