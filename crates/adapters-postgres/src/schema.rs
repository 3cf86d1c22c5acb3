//! Diesel's view of the tables in `migrations/postgres` (written by hand to match them).

diesel::table! {
    projects (id) {
        id -> Uuid,
        name -> Text,
        image -> Text,
        workdir -> Text,
        env -> Jsonb,
        resources -> Jsonb,
        max_concurrent_commands -> Integer,
        default_timeout_seconds -> Integer,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        max_queued_commands -> Nullable<Integer>,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        name -> Text,
        prefix -> Text,
        key_hash -> Text,
        previous_hash -> Nullable<Text>,
        previous_valid_until -> Nullable<Timestamptz>,
        scopes -> Jsonb,
        projects -> Nullable<Jsonb>,
        rate_limit_rps -> Nullable<Integer>,
        expires_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        last_used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    api_key_allowed_ips (api_key_id, position) {
        api_key_id -> Uuid,
        position -> Integer,
        cidr -> Cidr,
    }
}

diesel::table! {
    commands (id) {
        id -> Uuid,
        seq -> BigInt,
        project_id -> Uuid,
        project_name -> Text,
        spec -> Jsonb,
        env -> Jsonb,
        cwd -> Nullable<Text>,
        stdin -> Nullable<Bytea>,
        timeout_seconds -> Integer,
        priority -> SmallInt,
        status -> Text,
        exit_code -> Nullable<Integer>,
        termination_reason -> Nullable<Text>,
        error -> Nullable<Text>,
        created_by -> Nullable<Uuid>,
        cancel_requested -> Bool,
        queued_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        fence -> BigInt,
        event_seq -> BigInt,
        idempotency_key -> Nullable<Text>,
        idempotency_fingerprint -> Nullable<Text>,
        stdout -> Bytea,
        stderr -> Bytea,
        stdout_truncated -> Bool,
        stderr_truncated -> Bool,
        traceparent -> Nullable<Text>,
        tracestate -> Nullable<Text>,
    }
}

diesel::table! {
    command_events (command_id, seq) {
        command_id -> Uuid,
        seq -> BigInt,
        kind -> Text,
        stream -> Nullable<Text>,
        data -> Nullable<Bytea>,
        at -> Timestamptz,
    }
}

diesel::table! {
    audit_checkpoints (seq) {
        seq -> BigInt,
        hash -> Bytea,
        count -> BigInt,
        at -> Timestamptz,
        mac -> Bytea,
    }
}

diesel::table! {
    audit_log (seq) {
        seq -> BigInt,
        id -> Uuid,
        at -> Timestamptz,
        actor -> Nullable<Uuid>,
        client_ip -> Nullable<Text>,
        action -> Text,
        resource -> Text,
        project -> Nullable<Text>,
        outcome -> Text,
        detail -> Nullable<Text>,
        request_id -> Nullable<Text>,
        trace_id -> Nullable<Text>,
        prev_hash -> Bytea,
        hash -> Bytea,
        count -> BigInt,
    }
}

diesel::table! {
    workers (id) {
        id -> Text,
        capacity -> Integer,
        last_seen -> Timestamptz,
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
    audit_log,
    workers,
);
