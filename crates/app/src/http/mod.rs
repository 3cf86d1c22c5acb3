//! HTTP plumbing shared by every route: problem documents, request context and the `Caller`
//! extractor, the observing middleware, body and query extractors, paging.

pub mod body;
pub mod connection;
pub mod context;
pub mod limits;
pub mod middleware;
pub mod problem;
pub mod whole;

use actix_web::{web, HttpRequest, HttpResponse};
use domain::pagination::{Cursor, Limit, Page, PageRequest};
use serde::{Deserialize, Serialize};

pub use body::JsonBody;
pub use context::Caller;
pub use problem::{ApiError, ApiResult};

/// `?limit=&cursor=` of every list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size (default 50).
    #[param(schema_with = crate::openapi::schemas::page_limit)]
    pub limit: Option<i64>,
    /// Cursor from the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// Validates into a page request.
    pub fn page(&self) -> ApiResult<PageRequest> {
        let limit = self.limit.map(Limit::new).transpose()?.unwrap_or(Limit::DEFAULT);
        let after = self.cursor.as_deref().map(Cursor::parse).transpose()?;
        Ok(PageRequest { after, limit })
    }
}

/// A page of items on the wire.
#[derive(Debug, Serialize)]
pub struct PageOf<T> {
    /// The items.
    pub items: Vec<T>,
    /// Cursor of the next page; null at the end.
    pub next_cursor: Option<String>,
}

impl<T> PageOf<T> {
    /// Converts a domain page.
    pub fn from_page<D>(page: Page<D>, f: impl FnMut(D) -> T) -> Self {
        let next_cursor = page.next.map(Cursor::encode);
        Self { items: page.items.into_iter().map(f).collect(), next_cursor }
    }
}

/// Declares the named page schema of one item type, so that generated clients see `items` as
/// a list of that type rather than an inlined copy of it.
macro_rules! page_schema {
    ($(#[$doc:meta])* $page:ident of $item:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $page;

        impl utoipa::PartialSchema for $page {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::openapi::schemas::page_of(<$item as utoipa::ToSchema>::name().as_ref())
            }
        }

        impl utoipa::ToSchema for $page {
            fn schemas(
                schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>,
            ) {
                let item = <$item as utoipa::ToSchema>::name().into_owned();
                schemas.push((item, <$item as utoipa::PartialSchema>::schema()));
                <$item as utoipa::ToSchema>::schemas(schemas);
            }
        }
    };
}

page_schema!(
    /// A page of projects.
    ProjectPage of crate::routes::projects::ProjectView
);
page_schema!(
    /// A page of commands.
    CommandPage of crate::routes::commands::CommandBody
);
page_schema!(
    /// A page of API keys.
    ApiKeyPage of crate::routes::api_keys::ApiKeyView
);
page_schema!(
    /// A page of audit records.
    AuditRecordPage of crate::routes::audit::AuditRecordBody
);
page_schema!(
    /// A page of webhook subscriptions.
    WebhookPage of crate::routes::webhooks::WebhookView
);
page_schema!(
    /// A page of webhook deliveries.
    DeliveryPage of crate::routes::webhooks::DeliveryView
);

/// A resource whose unknown methods answer 405 with `Allow`.
pub fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path)
        .default_service(web::to(move || async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow)) }))
}

/// The answer for paths no route matches.
pub async fn route_not_found(_req: HttpRequest) -> ApiResult<HttpResponse> {
    Err(ApiError::RouteNotFound)
}

/// Query-string errors become 400 problem documents.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| ApiError::invalid("query", err.to_string()).into())
}

/// Path errors become 400 problem documents.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, _req| ApiError::invalid("path", err.to_string()).into())
}

/// Parses a path id, answering 400 for anything that is not a UUID.
pub fn parse_id<T: std::str::FromStr<Err = domain::DomainError>>(raw: &str) -> ApiResult<T> {
    raw.parse::<T>().map_err(ApiError::from)
}
