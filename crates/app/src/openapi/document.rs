//! What every operation shares, added once to the generated document: problem documents as
//! `application/problem+json`, a `default` problem response, and the response headers the
//! middleware sets on every answer.

use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, Parameter, ParameterIn, PathItem};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{Content, Ref, RefOr, Required, Response};
use utoipa::Modify;

use super::schemas;
use crate::http::problem::PROBLEM_JSON;

/// Paths served without authentication (and without rate-limit headers).
pub const PUBLIC_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// Marks the public paths, types every error as a problem document, documents the common
/// headers and gives every operation a `default` problem response.
#[derive(Debug)]
pub struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            let public = PUBLIC_PATHS.contains(&path.as_str());
            for op in operations(item) {
                if public {
                    op.security = Some(Vec::new());
                }
                complete(op, public);
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head]
        .into_iter()
        .filter_map(Option::as_mut)
}

fn complete(op: &mut Operation, public: bool) {
    for parameter in op.parameters.iter_mut().flatten() {
        retype_parameter(parameter);
    }
    if let Some(body) = op.request_body.as_mut() {
        // Say it outright: generators differ on what an absent `required` means.
        body.required.get_or_insert(Required::False);
        // An optional body is left out, never sent as JSON `null` (the server refuses that).
        for content in body.content.values_mut() {
            if let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema {
                let not_null: Vec<_> = one_of.items.iter().filter(|s| !is_null(s)).cloned().collect();
                if let [single] = not_null.as_slice() {
                    content.schema = Some(single.clone());
                }
            }
        }
    }
    for (status, response) in &mut op.responses.responses {
        let RefOr::T(response) = response else { continue };
        retype_problem(response);
        add_headers(response, status, public);
    }
    let mut fallback = Response::new(
        "Any other error, such as `internal` (500) or `unavailable` (503, with `Retry-After`), as a problem document",
    );
    fallback.content.insert(PROBLEM_JSON.to_owned(), Content::new(Some(problem_ref())));
    add_headers(&mut fallback, "default", public);
    op.responses.responses.insert("default".to_owned(), RefOr::T(fallback));
}

/// Query and header values are never JSON `null`: an optional one is simply left out. The
/// headers with a grammar get it here, where the annotations cannot give one.
fn retype_parameter(parameter: &mut Parameter) {
    if parameter.parameter_in == ParameterIn::Path {
        return;
    }
    match parameter.name.as_str() {
        "Idempotency-Key" => parameter.schema = Some(schemas::idempotency_key().into()),
        "Last-Event-ID" => parameter.schema = Some(schemas::last_event_id().into()),
        _ => {}
    }
    if let Some(RefOr::T(Schema::Object(object))) = parameter.schema.as_mut() {
        if let SchemaType::Array(types) = &object.schema_type {
            let kept: Vec<Type> = types.iter().filter(|t| **t != Type::Null).cloned().collect();
            if let [single] = kept.as_slice() {
                object.schema_type = SchemaType::Type(single.clone());
            }
        }
    }
}

fn is_null(schema: &RefOr<Schema>) -> bool {
    matches!(schema, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null))
}

fn problem_ref() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name("Problem"))
}

/// A response documented with `body = Problem` is served as `application/problem+json`.
fn retype_problem(response: &mut Response) {
    let is_problem = response
        .content
        .get("application/json")
        .and_then(|c| c.schema.as_ref())
        .is_some_and(|s| matches!(s, RefOr::Ref(r) if r.ref_location.ends_with("/Problem")));
    if is_problem {
        response.content.shift_remove("application/json");
        response.content.insert(PROBLEM_JSON.to_owned(), Content::new(Some(problem_ref())));
    }
}

fn add_headers(response: &mut Response, status: &str, public: bool) {
    let mut add = |name: &str, ty: Type, description: &str| {
        let integer = ty == Type::Integer;
        let schema = ObjectBuilder::new().schema_type(ty);
        let schema = if integer { schema.minimum(Some(0u64)) } else { schema };
        let mut header = Header::new(schema);
        header.description = Some(description.to_owned());
        response.headers.entry(name.to_owned()).or_insert(header);
    };
    add("X-Request-Id", Type::String, "The request's id: the client's `X-Request-Id` when it sent one");
    if !public {
        add("RateLimit-Limit", Type::Integer, "Requests allowed per window");
        add("RateLimit-Remaining", Type::Integer, "Requests left in the window");
        add("RateLimit-Reset", Type::Integer, "Seconds until the window ends");
    }
    if matches!(status, "429" | "503" | "default") {
        add("Retry-After", Type::Integer, "Seconds to wait before retrying");
    }
    if status == "401" {
        add("WWW-Authenticate", Type::String, "`Bearer`");
    }
}

/// The submit body takes exactly one of `command` and `script`: the derived object schema is
/// wrapped as `allOf: [object, oneOf: [has command, has script]]`.
#[derive(Debug)]
pub struct CommandOrScript;

impl Modify for CommandOrScript {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else { return };
        let Some(derived) = components.schemas.remove("SubmitRequest") else { return };
        let present = |field: &str, ty: Type| -> RefOr<Schema> {
            ObjectBuilder::new().property(field, ObjectBuilder::new().schema_type(ty)).required(field).into()
        };
        let exactly_one = OneOfBuilder::new()
            .item(present("command", Type::Array))
            .item(present("script", Type::String))
            .description(Some("Exactly one of `command` (a non-null array) and `script` (a non-null string)"));
        let combined = AllOfBuilder::new().item(derived).item(exactly_one);
        components.schemas.insert("SubmitRequest".to_owned(), combined.into());
    }
}
