//! Diesel's view of the tables in `migrations/sqlite` (written by hand to match them).

diesel::table! {
    projects (id) {
        id -> Text,
        name -> Text,
        image -> Text,
        workdir -> Text,
        env -> Text,
        resources -> Text,
        max_concurrent_commands -> Integer,
        default_timeout_seconds -> Integer,
        created_at -> BigInt,
        updated_at -> BigInt,
        max_queued_commands -> Nullable<Integer>,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        name -> Text,
        prefix -> Text,
        key_hash -> Text,
        previous_hash -> Nullable<Text>,
        previous_valid_until -> Nullable<BigInt>,
        scopes -> Text,
        projects -> Nullable<Text>,
        rate_limit_rps -> Nullable<Integer>,
        expires_at -> Nullable<BigInt>,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    api_key_allowed_ips (api_key_id, position) {
        api_key_id -> Text,
        position -> Integer,
        cidr -> Text,
    }
}

diesel::table! {
    commands (seq) {
        seq -> BigInt,
        id -> Text,
        project_id -> Text,
        project_name -> Text,
        spec -> Text,
        env -> Text,
        cwd -> Nullable<Text>,
        stdin -> Nullable<Text>,
        timeout_seconds -> Integer,
        priority -> SmallInt,
        status -> Text,
        exit_code -> Nullable<Integer>,
        termination_reason -> Nullable<Text>,
        error -> Nullable<Text>,
        created_by -> Nullable<Text>,
        cancel_requested -> Bool,
        queued_at -> BigInt,
        started_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<BigInt>,
        fence -> BigInt,
        idempotency_key -> Nullable<Text>,
        idempotency_fingerprint -> Nullable<Text>,
        stdout -> Text,
        stderr -> Text,
        stdout_truncated -> Bool,
        stderr_truncated -> Bool,
        traceparent -> Nullable<Text>,
        tracestate -> Nullable<Text>,
    }
}

diesel::table! {
    command_events (command_id, seq) {
        command_id -> Text,
        seq -> BigInt,
        kind -> Text,
        stream -> Nullable<Text>,
        data -> Nullable<Text>,
        at -> BigInt,
    }
}

diesel::table! {
    counters (name) {
        name -> Text,
        value -> BigInt,
    }
}

diesel::table! {
    audit_checkpoints (seq) {
        seq -> BigInt,
        hash -> Binary,
        count -> BigInt,
        at -> BigInt,
        mac -> Binary,
    }
}

diesel::table! {
    audit_log (seq) {
        seq -> BigInt,
        id -> Text,
        at -> BigInt,
        actor -> Nullable<Text>,
        client_ip -> Nullable<Text>,
        action -> Text,
        resource -> Text,
        project -> Nullable<Text>,
        outcome -> Text,
        detail -> Nullable<Text>,
        request_id -> Nullable<Text>,
        trace_id -> Nullable<Text>,
        prev_hash -> Binary,
        hash -> Binary,
        count -> BigInt,
    }
}

diesel::table! {
    rate_limiting (key, window_start) {
        key -> Text,
        window_start -> BigInt,
        count -> BigInt,
    }
}

diesel::table! {
    workers (id) {
        id -> Text,
        capacity -> Integer,
        last_seen -> BigInt,
    }
}

diesel::joinable!(api_key_allowed_ips -> api_keys (api_key_id));
diesel::joinable!(commands -> projects (project_id));

diesel::allow_tables_to_appear_in_same_query!(
    audit_checkpoints,
    projects,
    api_keys,
    api_key_allowed_ips,
    commands,
    command_events,
    counters,
    audit_log,
    rate_limiting,
    workers,
);
