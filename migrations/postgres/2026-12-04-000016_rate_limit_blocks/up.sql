-- A replica takes a block of a key's window in one call and admits from it locally, so the
-- key's row is written once per block instead of once per request (`rate_limit_acquire` stays
-- for replicas of the previous release during a rolling upgrade).
--
-- Atomically: hand back what the caller never admitted from an earlier block (`p_unused` of
-- window `p_unused_start`), then take up to `p_want` requests of the current window: the
-- largest k with `previous * overlap + current + k <= limit`, the float8 arithmetic of
-- `RateLimitPolicy::room`. Rows are locked in window order (the handed-back window is older
-- than the current one), so concurrent calls cannot deadlock.
CREATE FUNCTION rate_limit_take(
    p_key TEXT, p_current_start BIGINT, p_previous_start BIGINT, p_overlap DOUBLE PRECISION, p_limit BIGINT,
    p_want BIGINT, p_unused_start BIGINT, p_unused BIGINT
) RETURNS TABLE (previous BIGINT, current BIGINT, granted BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_previous BIGINT;
    v_current  BIGINT;
    v_estimate DOUBLE PRECISION;
    v_granted  BIGINT;
BEGIN
    IF p_unused > 0 THEN
        UPDATE rate_limiting r SET count = GREATEST(r.count - p_unused, 0)
            WHERE r.key = p_key AND r.window_start = p_unused_start;
    END IF;
    INSERT INTO rate_limiting AS r (key, window_start, count) VALUES (p_key, p_current_start, 0)
        ON CONFLICT (key, window_start) DO NOTHING;
    SELECT r.count INTO v_current FROM rate_limiting r
        WHERE r.key = p_key AND r.window_start = p_current_start FOR UPDATE;
    SELECT COALESCE(MAX(r.count), 0) INTO v_previous FROM rate_limiting r
        WHERE r.key = p_key AND r.window_start = p_previous_start;
    v_estimate := v_previous::DOUBLE PRECISION * p_overlap + v_current::DOUBLE PRECISION;
    v_granted := LEAST(p_want::DOUBLE PRECISION,
        GREATEST(FLOOR(p_limit::DOUBLE PRECISION - v_estimate), 0.0))::BIGINT;
    WHILE v_granted > 0 AND v_estimate + v_granted::DOUBLE PRECISION > p_limit::DOUBLE PRECISION LOOP
        v_granted := v_granted - 1;
    END LOOP;
    IF v_granted > 0 THEN
        UPDATE rate_limiting r SET count = r.count + v_granted
            WHERE r.key = p_key AND r.window_start = p_current_start;
    END IF;
    -- Windows before the previous one no longer weigh in on any decision.
    DELETE FROM rate_limiting r WHERE r.key = p_key AND r.window_start < p_previous_start;
    RETURN QUERY SELECT v_previous, v_current, v_granted;
END
$$;
