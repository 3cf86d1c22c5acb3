ALTER TABLE webhook_deliveries RESET (fillfactor);
DROP FUNCTION webhook_delivery_id(TIMESTAMPTZ, BIGINT);
