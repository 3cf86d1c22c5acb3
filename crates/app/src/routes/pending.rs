//! Routes of DESIGN.md §2 whose features come with later issues: they answer 501 problem
//! documents naming what is missing, so clients get a clear answer rather than a 404.

use actix_web::HttpResponse;

use crate::http::{ApiError, ApiResult, Caller};

/// Webhooks arrive with the webhooks issue.
pub async fn webhooks(_caller: Caller) -> ApiResult<HttpResponse> {
    Err(ApiError::NotImplemented("webhooks are not available yet"))
}
