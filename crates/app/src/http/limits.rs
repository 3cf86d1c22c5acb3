//! Request-head limits answered with problem documents. actix-http itself refuses a header
//! block over its 32 KiB read buffer with a bare 431; this lower limit answers first, with a
//! problem document like every other refusal.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::ResponseError;

use super::problem::ApiError;

/// Largest header block (names, values and separators) a request may carry.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Refuses requests whose headers are over [`MAX_HEADER_BYTES`] with 431 `headers_too_large`.
pub async fn header_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let size: usize = req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if size > MAX_HEADER_BYTES {
        let response = ApiError::HeadersTooLarge(MAX_HEADER_BYTES).error_response();
        return Ok(req.into_response(response));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}
