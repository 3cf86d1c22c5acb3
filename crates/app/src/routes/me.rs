//! `GET /v1/me`.

use actix_web::{web, HttpResponse};

use super::api_keys::ApiKeyView;
use crate::http::{ApiResult, Caller};

/// The calling key, without its secret.
#[utoipa::path(get, path = "/v1/me", tag = "api-keys", operation_id = "get_current_api_key", responses(
    (status = 200, description = "The calling key", body = ApiKeyView),
    (status = 401, description = "Missing or invalid key", body = crate::http::problem::Problem),
    (status = 403, description = "Key not usable from this address", body = crate::http::problem::Problem),
    (status = 429, description = "Rate limited", body = crate::http::problem::Problem)))]
pub async fn me(caller: Caller) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(ApiKeyView::from(caller.key)))
}

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::http::resource("/v1/me", "GET").route(web::get().to(me)));
}
