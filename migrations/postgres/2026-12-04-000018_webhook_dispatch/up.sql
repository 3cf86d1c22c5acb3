-- Issue 16: the dispatcher fans out and leases in one statement, so the deliveries it creates
-- get their ids in SQL. A UUID v7 as `DeliveryId::generate` makes them: the time `at` in
-- milliseconds, then its sub-millisecond part in 12 bits (ids of later statements sort after),
-- then the variant, `n` in 20 bits (ids of one statement sort in its order) and 42 random bits.
CREATE FUNCTION webhook_delivery_id(at TIMESTAMPTZ, n BIGINT) RETURNS UUID
LANGUAGE sql VOLATILE AS $$
    SELECT (lpad(to_hex(floor(ms)::BIGINT), 12, '0')
        || '7' || lpad(to_hex(floor((ms - floor(ms)) * 4096)::BIGINT), 3, '0')
        || to_hex(x'8000000000000000'::BIGINT | ((n & 1048575) << 42) | floor(random() * 4398046511104)::BIGINT))::UUID
    FROM (SELECT extract(epoch FROM at) * 1000 AS ms) t
$$;

-- A lease changes only columns no index holds (owner, expiry, fence): with room left on the
-- row's page it is a HOT update, which writes no index entry. Only pages written from now on
-- keep the room; older ones fill up as before.
ALTER TABLE webhook_deliveries SET (fillfactor = 80);
