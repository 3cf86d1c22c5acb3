//! `JsonBody<T>`: reads a JSON body under `MAX_REQUEST_BYTES` (chunked or not), names the field
//! that failed to parse, then runs the DTO's `validator` rules.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use domain::{DomainError, FieldError};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use validator::{Validate, ValidationErrors, ValidationErrorsKind};

use super::problem::ApiError;
use crate::state::AppState;

/// A parsed, validated JSON body.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Validate + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let settings =
            req.app_data::<web::Data<AppState>>().map(|s| (s.http.max_request_bytes, s.http.body_read_timeout));
        let (limit, timeout) = settings.unwrap_or((1024 * 1024, std::time::Duration::from_secs(30)));
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if declared.is_some_and(|n| n > limit) {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            let read = async {
                let mut body = web::BytesMut::new();
                while let Some(chunk) = payload.next().await {
                    let chunk =
                        chunk.map_err(|e| ApiError::invalid("body", format!("could not read the body: {e}")))?;
                    if body.len() + chunk.len() > limit {
                        return Err(ApiError::PayloadTooLarge(limit));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            };
            // One deadline for the whole body: a client trickling a byte a second must not hold
            // a connection (and an authenticated request's slot) for ever.
            let body = tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| ApiError::RequestTimeout(timeout.as_secs()))??;
            let value: T = parse(&body)?;
            value.validate().map_err(|e| ApiError::Domain(DomainError::Invalid(field_errors(&e, ""))))?;
            Ok(JsonBody(value))
        })
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // An empty body reads as `{}`: optional-only bodies (rotate) may be omitted, and required
    // fields are then reported as missing by name.
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    // Every body is an object; serde would also build a struct from an array of its fields.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::invalid(&field, e.inner().to_string())
    })?;
    de.end().map_err(|e| ApiError::invalid("body", e.to_string()))?;
    Ok(value)
}

/// Flattens `validator` errors into field errors (`resources.cpu`, `env`).
pub fn field_errors(errors: &ValidationErrors, prefix: &str) -> Vec<FieldError> {
    let mut out = Vec::new();
    for (field, kind) in errors.errors() {
        let name = format!("{prefix}{field}");
        match kind {
            ValidationErrorsKind::Field(list) => out.extend(list.iter().map(|e| {
                let message = e.message.as_ref().map_or_else(|| e.code.to_string(), ToString::to_string);
                FieldError::new(name.clone(), message)
            })),
            ValidationErrorsKind::Struct(inner) => out.extend(field_errors(inner, &format!("{name}."))),
            ValidationErrorsKind::List(items) => {
                for (i, inner) in items {
                    out.extend(field_errors(inner, &format!("{name}[{i}].")));
                }
            }
        }
    }
    out
}
