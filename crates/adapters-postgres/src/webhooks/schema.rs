//! Diesel's view of the tables in `migrations/postgres/2026-11-26-000002_webhooks`.

diesel::table! {
    webhooks (id) {
        id -> Uuid,
        url -> Text,
        events -> Jsonb,
        projects -> Nullable<Jsonb>,
        secret -> Text,
        previous_secret -> Nullable<Text>,
        previous_valid_until -> Nullable<Timestamptz>,
        enabled -> Bool,
        disabled_reason -> Nullable<Text>,
        failing_since -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_events (seq) {
        seq -> BigInt,
        id -> Uuid,
        event_type -> Text,
        project -> Nullable<Text>,
        target_webhook -> Nullable<Uuid>,
        payload -> Text,
        created_at -> Timestamptz,
        dispatched_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Uuid,
        webhook_id -> Uuid,
        event_id -> Uuid,
        event_type -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> Nullable<Timestamptz>,
        last_attempt_at -> Nullable<Timestamptz>,
        redelivery_of -> Nullable<Uuid>,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        fence -> BigInt,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_attempts (delivery_id, number) {
        delivery_id -> Uuid,
        number -> Integer,
        at -> Timestamptz,
        status_code -> Nullable<Integer>,
        latency_ms -> BigInt,
        response_snippet -> Nullable<Text>,
        error -> Nullable<Text>,
    }
}
