//! Diesel's view of the webhook tables in `migrations/sqlite` (written by hand to match them).

diesel::table! {
    webhooks (id) {
        id -> Text,
        url -> Text,
        events -> Text,
        projects -> Nullable<Text>,
        secret -> Text,
        previous_secret -> Nullable<Text>,
        previous_valid_until -> Nullable<BigInt>,
        enabled -> Bool,
        disabled_reason -> Nullable<Text>,
        failing_since -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    webhook_events (seq) {
        seq -> BigInt,
        id -> Text,
        event_type -> Text,
        project -> Nullable<Text>,
        target_webhook -> Nullable<Text>,
        payload -> Text,
        created_at -> BigInt,
        dispatched_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Text,
        webhook_id -> Text,
        event_id -> Text,
        event_type -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> Nullable<BigInt>,
        last_attempt_at -> Nullable<BigInt>,
        redelivery_of -> Nullable<Text>,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<BigInt>,
        fence -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_attempts (delivery_id, number) {
        delivery_id -> Text,
        number -> Integer,
        at -> BigInt,
        status_code -> Nullable<Integer>,
        latency_ms -> Integer,
        response_snippet -> Nullable<Text>,
        error -> Nullable<Text>,
    }
}

diesel::joinable!(webhook_deliveries -> webhooks (webhook_id));
diesel::joinable!(webhook_attempts -> webhook_deliveries (delivery_id));

diesel::allow_tables_to_appear_in_same_query!(webhooks, webhook_events, webhook_deliveries, webhook_attempts);
