//! The row structs of every table both stores have, and their mapping, as macros a store expands
//! next to its diesel tables: `$backend` is its diesel backend (for `check_for_backend`),
//! `$columns` its `Columns` impl. Each macro expects the tables it names to be in scope under
//! those names, and declares `type Cols = $columns` for the module.
//!
//! The structs get diesel's `Queryable`, `Selectable` and `Insertable` from the expanding crate,
//! so their field names must be the tables' column names, as in the stores' `table!`s.

/// `ProjectRow` for `projects`.
#[macro_export]
macro_rules! project_rows {
    ($backend:path, $columns:ty) => {
        /// How this store types the columns that differ between stores.
        type Cols = $columns;

        /// One row of `projects`.
        #[derive(Debug, diesel::Queryable, diesel::Selectable, diesel::Insertable)]
        #[diesel(table_name = projects, check_for_backend($backend))]
        struct ProjectRow {
            id: <Cols as $crate::Columns>::Id,
            name: String,
            image: String,
            workdir: String,
            env: <Cols as $crate::Columns>::Json,
            resources: <Cols as $crate::Columns>::Json,
            max_concurrent_commands: i32,
            default_timeout_seconds: i32,
            created_at: <Cols as $crate::Columns>::Time,
            updated_at: <Cols as $crate::Columns>::Time,
            max_queued_commands: Option<i32>,
        }

        impl ProjectRow {
            fn from_domain(p: &$crate::__domain::project::Project) -> $crate::__domain::DomainResult<Self> {
                use $crate::codec::column_int;
                use $crate::Columns as _;
                Ok(Self {
                    id: Cols::id(p.id.as_uuid()),
                    name: p.name.as_str().to_owned(),
                    image: p.image.clone(),
                    workdir: p.workdir.clone(),
                    env: Cols::json(&p.env)?,
                    resources: Cols::json(&p.resources)?,
                    max_concurrent_commands: column_int("max_concurrent_commands", p.max_concurrent_commands)?,
                    default_timeout_seconds: column_int("default_timeout_seconds", p.default_timeout_seconds.get())?,
                    created_at: Cols::time(p.created_at),
                    updated_at: Cols::time(p.updated_at),
                    max_queued_commands: p
                        .max_queued_commands
                        .map(|n| column_int("max_queued_commands", n))
                        .transpose()?,
                })
            }

            fn into_domain(self) -> $crate::__domain::DomainResult<$crate::__domain::project::Project> {
                use $crate::__domain::command::{EnvMap, TimeoutSeconds};
                use $crate::__domain::ids::ProjectId;
                use $crate::__domain::project::{Project, Resources};
                use $crate::codec::{int, stored};
                use $crate::Columns as _;
                let timeout: u32 = int("default_timeout_seconds", self.default_timeout_seconds)?;
                Ok(Project {
                    id: ProjectId::from_uuid(Cols::read_id(self.id)?),
                    name: $crate::codec::project_name(&self.name)?,
                    image: self.image,
                    workdir: self.workdir,
                    env: Cols::read_json::<EnvMap>("projects.env", self.env)?,
                    resources: Cols::read_json::<Resources>("projects.resources", self.resources)?,
                    max_concurrent_commands: int("max_concurrent_commands", self.max_concurrent_commands)?,
                    max_queued_commands: self.max_queued_commands.map(|n| int("max_queued_commands", n)).transpose()?,
                    default_timeout_seconds: stored(
                        "default_timeout_seconds",
                        &timeout.to_string(),
                        TimeoutSeconds::new(timeout),
                    )?,
                    created_at: Cols::read_time(self.created_at)?,
                    updated_at: Cols::read_time(self.updated_at)?,
                })
            }
        }
    };
}

/// `KeyRow` for `api_keys`; its networks (`api_key_allowed_ips`) are read by the store.
#[macro_export]
macro_rules! api_key_rows {
    ($backend:path, $columns:ty) => {
        /// How this store types the columns that differ between stores.
        type Cols = $columns;

        /// One row of `api_keys`.
        #[derive(Debug, diesel::Queryable, diesel::Selectable, diesel::Insertable)]
        #[diesel(table_name = api_keys, check_for_backend($backend))]
        struct KeyRow {
            id: <Cols as $crate::Columns>::Id,
            name: String,
            prefix: String,
            key_hash: String,
            previous_hash: Option<String>,
            previous_valid_until: Option<<Cols as $crate::Columns>::Time>,
            scopes: <Cols as $crate::Columns>::Json,
            projects: Option<<Cols as $crate::Columns>::Json>,
            rate_limit_rps: Option<i32>,
            expires_at: Option<<Cols as $crate::Columns>::Time>,
            created_at: <Cols as $crate::Columns>::Time,
            revoked_at: Option<<Cols as $crate::Columns>::Time>,
            last_used_at: Option<<Cols as $crate::Columns>::Time>,
        }

        impl KeyRow {
            fn from_domain(k: &$crate::__domain::api_key::ApiKey) -> $crate::__domain::DomainResult<Self> {
                use $crate::Columns as _;
                let projects = k.projects.as_list().map(|names| Cols::json(&names)).transpose()?;
                Ok(Self {
                    id: Cols::id(k.id.as_uuid()),
                    name: k.name.clone(),
                    prefix: k.prefix.clone(),
                    key_hash: k.hash.to_hex(),
                    previous_hash: k.previous.map(|p| p.hash.to_hex()),
                    previous_valid_until: k.previous.map(|p| Cols::time(p.valid_until)),
                    scopes: Cols::json(&k.scopes)?,
                    projects,
                    rate_limit_rps: k
                        .rate_limit_rps
                        .map(|r| $crate::codec::column_int("rate_limit_rps", r))
                        .transpose()?,
                    expires_at: Cols::time_opt(k.expires_at),
                    created_at: Cols::time(k.created_at),
                    revoked_at: Cols::time_opt(k.revoked_at),
                    last_used_at: Cols::time_opt(k.last_used_at),
                })
            }

            /// The key, with `cidrs` (its networks in order) read by the caller.
            fn into_domain(
                self,
                cidrs: Vec<String>,
            ) -> $crate::__domain::DomainResult<$crate::__domain::api_key::ApiKey> {
                use $crate::__domain::api_key::{ApiKey, ApiKeyId, KeyHash, PreviousSecret, ScopeSet};
                use $crate::__domain::network::CidrList;
                use $crate::Columns as _;
                let previous = match (self.previous_hash, self.previous_valid_until) {
                    (Some(hash), Some(until)) => {
                        Some(PreviousSecret { hash: KeyHash::from_hex(&hash)?, valid_until: Cols::read_time(until)? })
                    }
                    _ => None,
                };
                let names = self.projects.map(|json| Cols::read_json::<Vec<String>>("api_keys.projects", json));
                Ok(ApiKey {
                    id: ApiKeyId::from_uuid(Cols::read_id(self.id)?),
                    name: self.name,
                    prefix: self.prefix,
                    hash: KeyHash::from_hex(&self.key_hash)?,
                    previous,
                    scopes: Cols::read_json::<ScopeSet>("api_keys.scopes", self.scopes)?,
                    projects: $crate::codec::project_access(names.transpose()?)?,
                    allowed_ips: $crate::codec::stored("allowed_ips", &cidrs.join(","), CidrList::parse(&cidrs))?,
                    rate_limit_rps: self.rate_limit_rps.map(|r| $crate::codec::int("rate_limit_rps", r)).transpose()?,
                    expires_at: Cols::read_time_opt(self.expires_at)?,
                    created_at: Cols::read_time(self.created_at)?,
                    revoked_at: Cols::read_time_opt(self.revoked_at)?,
                    last_used_at: Cols::read_time_opt(self.last_used_at)?,
                })
            }
        }
    };
}

/// `AuditRow` for `audit_log` and `CheckpointRow` for `audit_checkpoints`.
#[macro_export]
macro_rules! audit_rows {
    ($backend:path, $columns:ty) => {
        /// How this store types the columns that differ between stores.
        type Cols = $columns;

        /// One row of `audit_log`.
        #[derive(Debug, diesel::Queryable, diesel::Selectable, diesel::Insertable)]
        #[diesel(table_name = audit_log, check_for_backend($backend))]
        struct AuditRow {
            seq: i64,
            id: <Cols as $crate::Columns>::Id,
            at: <Cols as $crate::Columns>::Time,
            actor: Option<<Cols as $crate::Columns>::Id>,
            client_ip: Option<String>,
            action: String,
            resource: String,
            project: Option<String>,
            outcome: String,
            detail: Option<String>,
            request_id: Option<String>,
            trace_id: Option<String>,
            prev_hash: Vec<u8>,
            hash: Vec<u8>,
            count: i64,
        }

        impl AuditRow {
            fn from_domain(r: &$crate::__domain::audit::AuditRecord) -> Self {
                use $crate::Columns as _;
                let e = &r.entry;
                Self {
                    seq: r.seq,
                    id: Cols::id(r.id.as_uuid()),
                    at: Cols::time(e.at),
                    actor: e.actor.map(|a| Cols::id(a.as_uuid())),
                    client_ip: e.client_ip.clone(),
                    action: e.action.clone(),
                    resource: e.resource.clone(),
                    project: e.project.clone(),
                    outcome: e.outcome.as_str().to_owned(),
                    detail: e.detail.clone(),
                    request_id: e.request_id.clone(),
                    trace_id: e.trace_id.clone(),
                    prev_hash: r.prev_hash.to_vec(),
                    hash: r.hash.to_vec(),
                    count: i64::from(e.count),
                }
            }

            fn into_domain(self) -> $crate::__domain::DomainResult<$crate::__domain::audit::AuditRecord> {
                use $crate::__domain::audit::{AuditEntry, AuditOutcome, AuditRecord};
                use $crate::__domain::ids::{ApiKeyId, AuditId};
                use $crate::codec::{bytes32, corrupt};
                use $crate::Columns as _;
                let entry = AuditEntry {
                    at: Cols::read_time(self.at)?,
                    actor: Cols::read_id_opt(self.actor)?.map(ApiKeyId::from_uuid),
                    client_ip: self.client_ip,
                    action: self.action,
                    resource: self.resource,
                    project: self.project,
                    outcome: AuditOutcome::parse(&self.outcome).ok_or_else(|| corrupt("outcome", &self.outcome))?,
                    detail: self.detail,
                    request_id: self.request_id,
                    trace_id: self.trace_id,
                    count: u32::try_from(self.count).map_err(|_| corrupt("count", &self.count.to_string()))?,
                };
                Ok(AuditRecord {
                    id: AuditId::from_uuid(Cols::read_id(self.id)?),
                    seq: self.seq,
                    entry,
                    prev_hash: bytes32("prev_hash", self.prev_hash)?,
                    hash: bytes32("hash", self.hash)?,
                })
            }
        }

        /// One row of `audit_checkpoints`.
        #[derive(Debug, diesel::Queryable, diesel::Selectable, diesel::Insertable)]
        #[diesel(table_name = audit_checkpoints, check_for_backend($backend))]
        struct CheckpointRow {
            seq: i64,
            hash: Vec<u8>,
            count: i64,
            at: <Cols as $crate::Columns>::Time,
            mac: Vec<u8>,
        }

        impl CheckpointRow {
            fn into_domain(self) -> $crate::__domain::DomainResult<$crate::__domain::audit::AuditCheckpoint> {
                use $crate::codec::bytes32;
                use $crate::Columns as _;
                Ok($crate::__domain::audit::AuditCheckpoint {
                    seq: self.seq,
                    hash: bytes32("hash", self.hash)?,
                    count: self.count,
                    at: Cols::read_time(self.at)?,
                    mac: bytes32("mac", self.mac)?,
                })
            }
        }
    };
}

/// `WebhookRow` for `webhooks` and `EventRow` for the outbox, `webhook_events`.
#[macro_export]
macro_rules! webhook_rows {
    ($backend:path, $columns:ty) => {
        /// How this store types the columns that differ between stores.
        type Cols = $columns;

        /// One row of `webhooks`.
        #[derive(Debug, Clone, diesel::Queryable, diesel::Selectable, diesel::Insertable)]
        #[diesel(table_name = webhooks, check_for_backend($backend))]
        pub(crate) struct WebhookRow {
            id: <Cols as $crate::Columns>::Id,
            url: String,
            events: <Cols as $crate::Columns>::Json,
            projects: Option<<Cols as $crate::Columns>::Json>,
            secret: String,
            previous_secret: Option<String>,
            previous_valid_until: Option<<Cols as $crate::Columns>::Time>,
            enabled: bool,
            disabled_reason: Option<String>,
            failing_since: Option<<Cols as $crate::Columns>::Time>,
            created_at: <Cols as $crate::Columns>::Time,
            updated_at: <Cols as $crate::Columns>::Time,
        }

        /// The `projects` column: NULL for every project, else a JSON array of names.
        fn projects_column(
            projects: &$crate::__domain::api_key::ProjectAccess,
        ) -> $crate::__domain::DomainResult<Option<<Cols as $crate::Columns>::Json>> {
            use $crate::Columns as _;
            projects.as_list().map(|names| Cols::json(&names)).transpose()
        }

        impl WebhookRow {
            fn from_domain(w: &$crate::__domain::webhook::Webhook) -> $crate::__domain::DomainResult<Self> {
                use $crate::Columns as _;
                Ok(Self {
                    id: Cols::id(w.id.as_uuid()),
                    url: w.url.as_str().to_owned(),
                    events: Cols::json(&w.events)?,
                    projects: projects_column(&w.projects)?,
                    secret: w.secret.expose().to_owned(),
                    previous_secret: w.previous_secret.as_ref().map(|p| p.secret.expose().to_owned()),
                    previous_valid_until: w.previous_secret.as_ref().map(|p| Cols::time(p.valid_until)),
                    enabled: w.enabled,
                    disabled_reason: w.disabled_reason.clone(),
                    failing_since: Cols::time_opt(w.failing_since),
                    created_at: Cols::time(w.created_at),
                    updated_at: Cols::time(w.updated_at),
                })
            }

            pub(crate) fn into_domain(self) -> $crate::__domain::DomainResult<$crate::__domain::webhook::Webhook> {
                use $crate::__domain::webhook::{
                    EventSet, PreviousWebhookSecret, Webhook, WebhookId, WebhookSecret, WebhookUrl,
                };
                use $crate::codec::stored;
                use $crate::Columns as _;
                let secret = |s: &str| stored("webhooks.secret", "[redacted]", WebhookSecret::parse(s));
                let previous_secret = match (self.previous_secret, self.previous_valid_until) {
                    (Some(s), Some(until)) => {
                        Some(PreviousWebhookSecret { secret: secret(&s)?, valid_until: Cols::read_time(until)? })
                    }
                    _ => None,
                };
                let names = self.projects.map(|json| Cols::read_json::<Vec<String>>("webhooks.projects", json));
                Ok(Webhook {
                    id: WebhookId::from_uuid(Cols::read_id(self.id)?),
                    url: stored("webhooks.url", &self.url, WebhookUrl::parse(&self.url))?,
                    events: Cols::read_json::<EventSet>("webhooks.events", self.events)?,
                    projects: $crate::codec::project_access(names.transpose()?)?,
                    secret: secret(&self.secret)?,
                    previous_secret,
                    enabled: self.enabled,
                    disabled_reason: self.disabled_reason,
                    failing_since: Cols::read_time_opt(self.failing_since)?,
                    created_at: Cols::read_time(self.created_at)?,
                    updated_at: Cols::read_time(self.updated_at)?,
                })
            }
        }

        /// One row of `webhook_events`; the store assigns `seq`.
        #[derive(Debug, Clone, diesel::Queryable, diesel::Selectable, diesel::Insertable)]
        #[diesel(table_name = webhook_events, check_for_backend($backend))]
        pub(crate) struct EventRow {
            id: <Cols as $crate::Columns>::Id,
            event_type: String,
            project: Option<String>,
            target_webhook: Option<<Cols as $crate::Columns>::Id>,
            payload: String,
            created_at: <Cols as $crate::Columns>::Time,
        }

        impl EventRow {
            pub(crate) fn from_domain(e: &$crate::__domain::webhook::OutboxEvent) -> Self {
                use $crate::Columns as _;
                Self {
                    id: Cols::id(e.id.as_uuid()),
                    event_type: e.event_type.as_str().to_owned(),
                    project: e.project.as_ref().map(|p| p.as_str().to_owned()),
                    target_webhook: e.target.map(|t| Cols::id(t.as_uuid())),
                    payload: e.payload.as_str().to_owned(),
                    created_at: Cols::time(e.created_at),
                }
            }

            pub(crate) fn into_domain(self) -> $crate::__domain::DomainResult<$crate::__domain::webhook::OutboxEvent> {
                use $crate::__domain::webhook::{EventId, EventPayload, OutboxEvent, WebhookId};
                use $crate::Columns as _;
                Ok(OutboxEvent {
                    id: EventId::from_uuid(Cols::read_id(self.id)?),
                    event_type: $crate::codec::event_type(&self.event_type)?,
                    project: self.project.map(|p| $crate::codec::project_name(&p)).transpose()?,
                    target: Cols::read_id_opt(self.target_webhook)?.map(WebhookId::from_uuid),
                    created_at: Cols::read_time(self.created_at)?,
                    payload: $crate::codec::stored(
                        "webhook_events.payload",
                        "…",
                        EventPayload::from_text(self.payload),
                    )?,
                })
            }
        }
    };
}

/// `DeliveryRow` for `webhook_deliveries`, in scope as `deliveries`; also loadable from raw SQL.
#[macro_export]
macro_rules! delivery_rows {
    ($backend:path, $columns:ty) => {
        /// How this store types the columns that differ between stores.
        type Cols = $columns;

        /// One row of `webhook_deliveries`.
        #[derive(Debug, Clone, diesel::Queryable, diesel::QueryableByName, diesel::Selectable, diesel::Insertable)]
        #[diesel(table_name = deliveries, check_for_backend($backend))]
        struct DeliveryRow {
            id: <Cols as $crate::Columns>::Id,
            webhook_id: <Cols as $crate::Columns>::Id,
            event_id: <Cols as $crate::Columns>::Id,
            event_type: String,
            status: String,
            attempts: i32,
            next_attempt_at: Option<<Cols as $crate::Columns>::Time>,
            last_attempt_at: Option<<Cols as $crate::Columns>::Time>,
            redelivery_of: Option<<Cols as $crate::Columns>::Id>,
            lease_owner: Option<String>,
            lease_expires_at: Option<<Cols as $crate::Columns>::Time>,
            fence: i64,
            created_at: <Cols as $crate::Columns>::Time,
        }

        impl DeliveryRow {
            /// A pending delivery of `event` to `webhook`, due at once.
            fn new(
                id: $crate::__domain::webhook::DeliveryId,
                webhook: <Cols as $crate::Columns>::Id,
                event: &$crate::__domain::webhook::OutboxEvent,
                now: $crate::__domain::Timestamp,
            ) -> Self {
                use $crate::Columns as _;
                Self {
                    id: Cols::id(id.as_uuid()),
                    webhook_id: webhook,
                    event_id: Cols::id(event.id.as_uuid()),
                    event_type: event.event_type.as_str().to_owned(),
                    status: $crate::__domain::webhook::DeliveryStatus::Pending.as_str().to_owned(),
                    attempts: 0,
                    next_attempt_at: Some(Cols::time(now)),
                    last_attempt_at: None,
                    redelivery_of: None,
                    lease_owner: None,
                    lease_expires_at: None,
                    fence: 0,
                    created_at: Cols::time(now),
                }
            }

            fn into_domain(self) -> $crate::__domain::DomainResult<$crate::__domain::webhook::Delivery> {
                use $crate::__domain::webhook::{Delivery, DeliveryId, DeliveryStatus, EventId, WebhookId};
                use $crate::codec::{int, stored};
                use $crate::Columns as _;
                Ok(Delivery {
                    id: DeliveryId::from_uuid(Cols::read_id(self.id)?),
                    webhook_id: WebhookId::from_uuid(Cols::read_id(self.webhook_id)?),
                    event_id: EventId::from_uuid(Cols::read_id(self.event_id)?),
                    event_type: $crate::codec::event_type(&self.event_type)?,
                    status: stored("delivery status", &self.status, self.status.parse::<DeliveryStatus>())?,
                    attempts: int("attempts", self.attempts)?,
                    next_attempt_at: Cols::read_time_opt(self.next_attempt_at)?,
                    last_attempt_at: Cols::read_time_opt(self.last_attempt_at)?,
                    redelivery_of: Cols::read_id_opt(self.redelivery_of)?.map(DeliveryId::from_uuid),
                    created_at: Cols::read_time(self.created_at)?,
                })
            }
        }
    };
}

/// `EventRow` for a command's event log, `command_events`.
#[macro_export]
macro_rules! command_event_rows {
    ($backend:path, $columns:ty) => {
        /// How this store types the columns that differ between stores.
        type Cols = $columns;

        const STATUS: &str = "status";
        const OUTPUT: &str = "output";
        const EXIT: &str = "exit";

        /// One row of `command_events`.
        #[derive(Debug, diesel::Queryable, diesel::Selectable, diesel::Insertable)]
        #[diesel(table_name = command_events, check_for_backend($backend))]
        pub(crate) struct EventRow {
            command_id: <Cols as $crate::Columns>::Id,
            seq: i64,
            kind: String,
            stream: Option<String>,
            data: Option<<Cols as $crate::Columns>::Text>,
            at: <Cols as $crate::Columns>::Time,
        }

        impl EventRow {
            /// Event `seq` of command `command_id`.
            fn new(
                command_id: <Cols as $crate::Columns>::Id,
                seq: i64,
                kind: &$crate::__domain::output::EventKind,
                at: $crate::__domain::Timestamp,
            ) -> Self {
                use $crate::__domain::output::EventKind;
                use $crate::Columns as _;
                let (kind, stream, data) = match kind {
                    EventKind::Status(s) => (STATUS, None, Some(s.as_str().to_owned())),
                    EventKind::Output { stream, data } => {
                        (OUTPUT, Some(stream.as_str().to_owned()), Some(data.clone()))
                    }
                    EventKind::Exit => (EXIT, None, None),
                };
                Self { command_id, seq, kind: kind.to_owned(), stream, data: data.map(Cols::text), at: Cols::time(at) }
            }

            pub(crate) fn into_domain(self) -> $crate::__domain::DomainResult<$crate::__domain::output::CommandEvent> {
                use $crate::__domain::command::CommandStatus;
                use $crate::__domain::output::{CommandEvent, EventKind, OutputStream};
                use $crate::codec::{corrupt, stored};
                use $crate::Columns as _;
                let data = self.data.map(|d| Cols::read_text("command_events.data", d)).transpose()?;
                let kind = match (self.kind.as_str(), self.stream.as_deref(), data) {
                    (STATUS, None, Some(status)) => {
                        EventKind::Status(stored("event status", &status, status.parse::<CommandStatus>())?)
                    }
                    (OUTPUT, Some("stdout"), Some(data)) => EventKind::Output { stream: OutputStream::Stdout, data },
                    (OUTPUT, Some("stderr"), Some(data)) => EventKind::Output { stream: OutputStream::Stderr, data },
                    (EXIT, None, None) => EventKind::Exit,
                    _ => return Err(corrupt("command event", &format!("{} #{}", self.command_id, self.seq))),
                };
                Ok(CommandEvent { seq: self.seq, kind, at: Cols::read_time(self.at)? })
            }
        }
    };
}

/// `CommandRow` for `commands`: the columns that make a `Command` (output and queue bookkeeping
/// stay behind); also loadable from raw SQL. New rows are the store's own (their columns differ).
#[macro_export]
macro_rules! command_rows {
    ($backend:path, $columns:ty) => {
        /// How this store types the columns that differ between stores.
        type Cols = $columns;

        /// The columns of `commands` that make a `Command`.
        #[derive(Debug, Clone, diesel::Queryable, diesel::QueryableByName, diesel::Selectable)]
        #[diesel(table_name = commands, check_for_backend($backend))]
        pub(crate) struct CommandRow {
            id: <Cols as $crate::Columns>::Id,
            project_id: <Cols as $crate::Columns>::Id,
            project_name: String,
            spec: <Cols as $crate::Columns>::Json,
            env: <Cols as $crate::Columns>::Json,
            cwd: Option<String>,
            stdin: Option<<Cols as $crate::Columns>::Text>,
            timeout_seconds: i32,
            priority: i16,
            status: String,
            exit_code: Option<i32>,
            termination_reason: Option<String>,
            error: Option<String>,
            created_by: Option<<Cols as $crate::Columns>::Id>,
            cancel_requested: bool,
            queued_at: <Cols as $crate::Columns>::Time,
            started_at: Option<<Cols as $crate::Columns>::Time>,
            finished_at: Option<<Cols as $crate::Columns>::Time>,
            traceparent: Option<String>,
            tracestate: Option<String>,
        }

        impl CommandRow {
            pub(crate) fn into_domain(self) -> $crate::__domain::DomainResult<$crate::__domain::command::Command> {
                use $crate::__domain::command::{
                    Command, CommandSpec, CommandStatus, EnvMap, Priority, TerminationReason, TimeoutSeconds,
                };
                use $crate::__domain::ids::{ApiKeyId, CommandId, ProjectId};
                use $crate::__domain::trace::TraceContext;
                use $crate::codec::{int, stored};
                use $crate::Columns as _;
                let timeout: u32 = int("timeout_seconds", self.timeout_seconds)?;
                let reason = self
                    .termination_reason
                    .map(|r| stored("termination_reason", &r, r.parse::<TerminationReason>()))
                    .transpose()?;
                Ok(Command {
                    id: CommandId::from_uuid(Cols::read_id(self.id)?),
                    project_id: ProjectId::from_uuid(Cols::read_id(self.project_id)?),
                    project: $crate::codec::project_name(&self.project_name)?,
                    spec: Cols::read_json::<CommandSpec>("commands.spec", self.spec)?,
                    env: Cols::read_json::<EnvMap>("commands.env", self.env)?,
                    cwd: self
                        .cwd
                        .map(|c| stored("cwd", &c, domain::command::WorkingDir::parse(c.as_str())))
                        .transpose()?,
                    stdin: self
                        .stdin
                        .map(|s| Cols::read_text("commands.stdin", s))
                        .transpose()?
                        .map(|s| {
                            let size = format!("{} bytes", s.len());
                            stored("commands.stdin", &size, domain::command::CommandStdin::parse(s))
                        })
                        .transpose()?,
                    timeout: stored("timeout_seconds", &timeout.to_string(), TimeoutSeconds::new(timeout))?,
                    priority: Priority::from_rank(self.priority)?,
                    status: stored("status", &self.status, self.status.parse::<CommandStatus>())?,
                    exit_code: self.exit_code,
                    termination_reason: reason,
                    error: self.error,
                    created_by: Cols::read_id_opt(self.created_by)?.map(ApiKeyId::from_uuid),
                    cancel_requested: self.cancel_requested,
                    queued_at: Cols::read_time(self.queued_at)?,
                    started_at: Cols::read_time_opt(self.started_at)?,
                    finished_at: Cols::read_time_opt(self.finished_at)?,
                    // A stored value that no longer parses only loses the link to the trace.
                    trace: self.traceparent.and_then(|p| TraceContext::parse(&p, self.tracestate.as_deref())),
                })
            }
        }
    };
}
