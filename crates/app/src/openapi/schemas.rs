//! Schemas the derive cannot write: closed sets of names and bounded values, built from the
//! constants the domain validates with, so the document and the server cannot drift apart.

use domain::api_key::Scope;
use domain::audit::AuditOutcome;
use domain::command::{
    CommandSpec, CommandStatus as Status, EnvMap, Priority as Rank, TerminationReason as Reason, TimeoutSeconds,
    MAX_CWD_CHARS,
};
use domain::network::CidrList;
use domain::pagination::Limit;
use domain::pod::PodPhase as Phase;
use domain::project::{
    ProjectName as Name, MAX_IMAGE_LEN, MAX_PROJECT_CONCURRENCY, MAX_QUANTITY_LEN, MAX_QUEUED_LIMIT, MAX_WORKDIR_CHARS,
    QUANTITY_PATTERN,
};
use domain::webhook::{DeliveryStatus as Delivery, EventType as Event, WebhookUrl};
use serde_json::Value;
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::RefOr;

use crate::http::problem::PROBLEM_CODES;

/// Declares a named schema: a string that is one of `$values` (anything with `as_str`).
macro_rules! closed_set {
    ($(#[$doc:meta])* $name:ident, names $values:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                string_enum($values.iter().copied())
            }
        }

        impl utoipa::ToSchema for $name {}
    };
    ($(#[$doc:meta])* $name:ident, $values:expr) => {
        closed_set!($(#[$doc])* $name, names $values.map(|v| v.as_str()));
    };
}

closed_set!(
    /// Where a command is in its life.
    CommandStatus,
    Status::ALL
);
closed_set!(
    /// Dequeue order: `critical` first, then `high`, `normal`, `low`.
    Priority,
    Rank::ALL
);
closed_set!(
    /// How a command ended.
    TerminationReason,
    Reason::ALL
);
closed_set!(
    /// What an API key may do.
    ApiScope,
    Scope::ALL
);
closed_set!(
    /// How an audited action ended.
    AuditOutcomeName,
    AuditOutcome::ALL
);
closed_set!(
    /// Where a project's pod is in its life.
    PodPhase,
    Phase::ALL
);
closed_set!(
    /// A webhook event type.
    EventType,
    Event::ALL
);
closed_set!(
    /// Where a webhook delivery is.
    DeliveryStatus,
    Delivery::ALL
);
closed_set!(
    /// The machine-readable `code` of a problem document.
    ProblemCode,
    names PROBLEM_CODES
);
closed_set!(
    /// Whether signed checkpoints prove the audit log complete.
    Completeness,
    names ["proven", "unproven"]
);

/// A project name: a DNS label.
#[derive(Debug)]
pub struct ProjectName;

impl utoipa::PartialSchema for ProjectName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(Name::PATTERN))
            .min_length(Some(2))
            .max_length(Some(Name::MAX_LEN))
            .description(Some("Lowercase letters, digits and `-`; starts with a letter, 2 to 63 characters"))
            .into()
    }
}

impl utoipa::ToSchema for ProjectName {}

fn string_enum<'a>(values: impl Iterator<Item = &'a str>) -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.map(Value::from))).into()
}

fn nullable(required: bool, schema: ObjectBuilder, ty: Type) -> Schema {
    let kind: SchemaType = if required { ty.into() } else { SchemaType::from_iter([ty, Type::Null]) };
    schema.schema_type(kind).into()
}

fn integer(required: bool, min: u64, max: u64) -> Schema {
    let schema = ObjectBuilder::new().format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)));
    nullable(required, schema.minimum(Some(min)).maximum(Some(max)), Type::Integer)
}

/// A timeout: 1 to `TimeoutSeconds::MAX`; optional.
pub fn timeout_seconds() -> Schema {
    integer(false, 1, u64::from(TimeoutSeconds::MAX))
}

/// A stored timeout: always present.
pub fn timeout_seconds_required() -> Schema {
    integer(true, 1, u64::from(TimeoutSeconds::MAX))
}

/// A project's concurrency cap; optional.
pub fn max_concurrent_commands() -> Schema {
    integer(false, 1, u64::from(MAX_PROJECT_CONCURRENCY))
}

/// A project's queue cap; optional (null: the server default).
pub fn max_queued_commands() -> Schema {
    integer(false, 1, u64::from(MAX_QUEUED_LIMIT))
}

/// Longest grace period of a rotation: one week.
pub const MAX_GRACE_SECONDS: u64 = 604_800;

/// A rotation's grace period, 0 to a week.
pub fn grace_seconds() -> Schema {
    integer(true, 0, MAX_GRACE_SECONDS)
}

/// Highest per-key rate limit.
pub const MAX_KEY_RPS: u64 = 100_000;

/// A key's own rate limit; optional.
pub fn rate_limit_rps() -> Schema {
    integer(false, 1, MAX_KEY_RPS)
}

/// A page size, 1 to `Limit::MAX`.
pub fn page_limit() -> Schema {
    integer(false, 1, u64::from(Limit::MAX))
}

/// An environment: names `[A-Za-z_][A-Za-z0-9_]*`, values without NUL.
pub fn env() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(EnvMap::NAME_PATTERN))
                .max_length(Some(EnvMap::MAX_NAME_LEN)),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(NO_NUL))
                .max_length(Some(EnvMap::MAX_VALUE_CHARS)),
        ))
        .max_properties(Some(EnvMap::MAX_VARS))
        .into()
}

/// An optional environment (a patch's replacement).
pub fn optional_env() -> Schema {
    let Schema::Object(mut object) = env() else { return env() };
    object.schema_type = SchemaType::from_iter([Type::Object, Type::Null]);
    Schema::Object(object)
}

/// Text without NUL.
pub const NO_NUL: &str = "^[^\\u0000]*$";

/// A key's list of project names (empty: none); `null` means all.
pub fn project_list() -> Schema {
    projects(0)
}

/// A subscription's list of project names, at least one; `null` means all.
pub fn project_list_nonempty() -> Schema {
    projects(1)
}

fn projects(min: usize) -> Schema {
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ProjectName")))
        .min_items((min > 0).then_some(min))
        .max_items(Some(MAX_LISTED_PROJECTS))
        .into()
}

/// Most projects a key or subscription may list.
pub const MAX_LISTED_PROJECTS: usize = 1000;

fn text(required: bool, min: usize, max: Option<usize>, pattern: Option<&str>) -> Schema {
    let schema = ObjectBuilder::new().min_length((min > 0).then_some(min)).max_length(max).pattern(pattern);
    nullable(required, schema, Type::String)
}

/// `?wait=`: 0 to `MAX_WAIT_SECONDS`.
pub fn wait_seconds() -> Schema {
    integer(false, 0, crate::routes::commands::MAX_WAIT_SECONDS)
}

/// `?tail=`: lines from the end of a pod's log.
pub fn tail_lines() -> Schema {
    integer(false, 1, crate::routes::pods::MAX_TAIL)
}

/// A command's argv: a program, then its arguments, none with NUL.
pub fn argv() -> Schema {
    let arg = ObjectBuilder::new().schema_type(Type::String).pattern(Some(NO_NUL));
    let program = ObjectBuilder::new().schema_type(Type::String).pattern(Some(NO_NUL)).min_length(Some(1));
    let mut schema = ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(arg)
        .min_items(Some(1))
        .max_items(Some(CommandSpec::MAX_ARGS))
        .build();
    schema.prefix_items = vec![program.into()];
    schema.into()
}

/// A script: not blank, no NUL.
pub fn script() -> Schema {
    let blank: String = CommandSpec::BLANK.iter().map(|c| format!("\\u{:04x}", u32::from(*c))).collect();
    let pattern = format!("^[^\\u0000]*[^\\u0000{blank}][^\\u0000]*$");
    text(false, 1, Some(CommandSpec::MAX_BYTES), Some(&pattern))
}

/// A command's working directory.
pub fn cwd() -> Schema {
    text(false, 1, Some(MAX_CWD_CHARS), Some(NO_NUL))
}

/// Text fed to a command's stdin (bounded by `MAX_REQUEST_BYTES`).
pub fn stdin() -> Schema {
    text(false, 0, None, None)
}

/// A container image reference: printable ASCII, no spaces.
pub fn image(required: bool) -> Schema {
    text(required, 1, Some(MAX_IMAGE_LEN), Some("^[!-~]+$"))
}

/// A required image (create).
pub fn image_required() -> Schema {
    image(true)
}

/// An optional image (patch).
pub fn image_optional() -> Schema {
    image(false)
}

/// An absolute working directory.
pub fn workdir() -> Schema {
    text(false, 1, Some(MAX_WORKDIR_CHARS), Some("^/[^\\u0000]*$"))
}

/// A Kubernetes quantity (`500m`, `2`, `512Mi`).
pub fn quantity() -> Schema {
    text(false, 1, Some(MAX_QUANTITY_LEN), Some(QUANTITY_PATTERN))
}

/// An IPv4 address as Rust's parser takes it (no leading zeros).
const IPV4: &str =
    "(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
/// An IPv6 address: full, compressed, or ending in an IPv4 address.
const IPV6: &str = concat!(
    "(?:(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}",
    "|(?:[0-9a-fA-F]{1,4}:){1,7}:",
    "|(?:[0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}",
    "|(?:[0-9a-fA-F]{1,4}:){1,5}(?::[0-9a-fA-F]{1,4}){1,2}",
    "|(?:[0-9a-fA-F]{1,4}:){1,4}(?::[0-9a-fA-F]{1,4}){1,3}",
    "|(?:[0-9a-fA-F]{1,4}:){1,3}(?::[0-9a-fA-F]{1,4}){1,4}",
    "|(?:[0-9a-fA-F]{1,4}:){1,2}(?::[0-9a-fA-F]{1,4}){1,5}",
    "|[0-9a-fA-F]{1,4}:(?::[0-9a-fA-F]{1,4}){1,6}",
    "|:(?:(?::[0-9a-fA-F]{1,4}){1,7}|:))"
);

/// Client networks: IPv4 or IPv6 addresses, each with an optional prefix length.
pub fn cidr_list() -> Schema {
    let v4 = format!("^{IPV4}(?:/(?:3[0-2]|[12]?[0-9]))?$");
    let v6 = format!("^{IPV6}(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?$");
    let item = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some(v4)))
        .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some(v6)));
    ArrayBuilder::new().items(item).max_items(Some(CidrList::MAX_ENTRIES)).into()
}

/// The URLs the server takes: `http(s)://host[:port][/path][?query]`, the host a name whose last
/// label starts with a letter (a numeric one would be read as an IPv4 address), an IPv4 address
/// or a bracketed IPv6 one; no credentials, no fragment.
fn url_pattern() -> String {
    // The last label starts with a letter: a numeric one would make the host an IPv4 address.
    let name = "(?:[A-Za-z0-9-]+\\.)*[A-Za-z][A-Za-z0-9-]*";
    let port = "(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?";
    let path = "(?:/[A-Za-z0-9._~!$&'()*+,;=:@/%-]*)?";
    let query = "(?:\\?[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*)?";
    format!("^[hH][tT][tT][pP][sS]?://(?:{name}|{IPV4}|\\[{IPV6}\\]){port}{path}{query}$")
}

/// A webhook target URL.
pub fn url(required: bool) -> Schema {
    // The pattern alone is the contract: `format: uri` would refuse a stray `%` that the server,
    // like browsers, takes.
    let schema =
        ObjectBuilder::new().pattern(Some(url_pattern())).min_length(Some(1)).max_length(Some(WebhookUrl::MAX_LEN));
    nullable(required, schema, Type::String)
}

/// A required URL (create).
pub fn url_required() -> Schema {
    url(true)
}

/// An optional URL (patch).
pub fn url_optional() -> Schema {
    url(false)
}

/// Most entries an event list may have (repeats included).
pub const MAX_EVENT_ENTRIES: usize = 32;

/// Event types; `null`: all.
pub fn event_list() -> Schema {
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("EventType")))
        .min_items(Some(1))
        .max_items(Some(MAX_EVENT_ENTRIES))
        .into()
}

/// A page: `items` of the named schema and the next page's cursor.
pub fn page_of(item: &str) -> RefOr<Schema> {
    let items = ArrayBuilder::new().items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(item)));
    let cursor = ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .description(Some("Cursor of the next page; null at the end"));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("items", items)
        .property("next_cursor", cursor)
        .required("items")
        .required("next_cursor")
        .into()
}

/// The `Idempotency-Key` header: 1 to 255 printable ASCII characters without spaces.
pub fn idempotency_key() -> Schema {
    ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[!-~]{1,255}$")).into()
}

/// The `Last-Event-ID` header: a non-negative event sequence number.
pub fn last_event_id() -> Schema {
    ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0u64)).maximum(Some(i64::MAX)).into()
}

/// One Server-Sent Event of a command's stream: `id` (its sequence number, for
/// `Last-Event-ID`), `event` (`output`, `status` or `exit`) and `data` (JSON text).
#[derive(Debug)]
pub struct CommandEvent;

impl utoipa::PartialSchema for CommandEvent {
    fn schema() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("id", string().pattern(Some("^[0-9]+$")))
            .property("event", string().enum_values(Some(["output", "status", "exit"])))
            .property("data", string().description(Some("JSON: `{stream, data}`, `{status}`, or the command")))
            .required("id")
            .required("event")
            .required("data")
            .into()
    }
}

impl utoipa::ToSchema for CommandEvent {}
