//! `ApiKeyRepository` on SQLite: `api_keys` and the key's networks in `api_key_allowed_ips`.

use std::collections::HashMap;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::SqliteConnection;

use domain::api_key::{ApiKey, ApiKeyId, KeyHash, PreviousSecret};
use domain::pagination::{Page, PageRequest};
use domain::ports::ApiKeyRepository;
use domain::{DomainError, DomainResult, Timestamp};

use crate::codec::{self, micros};
use crate::schema::{api_key_allowed_ips, api_keys};
use crate::{SqliteStore, StoreResult};

sql_rows::api_key_rows!(diesel::sqlite::Sqlite, crate::codec::SqliteColumns);

fn not_found() -> DomainError {
    DomainError::NotFound("API key".into())
}

/// Loads the networks of `rows` and builds the keys, in the rows' order.
fn with_networks(conn: &mut SqliteConnection, rows: Vec<KeyRow>) -> StoreResult<Vec<ApiKey>> {
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let nets: Vec<(String, String)> = api_key_allowed_ips::table
        .filter(api_key_allowed_ips::api_key_id.eq_any(&ids))
        .order((api_key_allowed_ips::api_key_id, api_key_allowed_ips::position))
        .select((api_key_allowed_ips::api_key_id, api_key_allowed_ips::cidr))
        .load(conn)?;
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    for (id, cidr) in nets {
        by_key.entry(id).or_default().push(cidr);
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let cidrs = by_key.remove(&row.id).unwrap_or_default();
            row.into_domain(cidrs)
        })
        .collect::<DomainResult<_>>()?)
}

/// The key with `id`, or `NotFound`.
fn load(conn: &mut SqliteConnection, id: &str) -> StoreResult<ApiKey> {
    let row = api_keys::table.find(id).select(KeyRow::as_select()).first(conn).optional()?.ok_or_else(not_found)?;
    with_networks(conn, vec![row])?.pop().ok_or_else(|| not_found().into())
}

#[async_trait]
impl ApiKeyRepository for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all, fields(api_key_id = %key.id))]
    async fn create(&self, key: &ApiKey) -> DomainResult<()> {
        let row = KeyRow::from_domain(key)?;
        let cidrs = key.allowed_ips.to_strings();
        self.write("create API key", move |conn| {
            diesel::insert_into(api_keys::table).values(&row).execute(conn)?;
            let nets = cidrs
                .iter()
                .enumerate()
                .map(|(i, cidr)| {
                    let position: i32 = codec::column_int("allowed_ips position", i)?;
                    Ok((
                        api_key_allowed_ips::api_key_id.eq(&row.id),
                        api_key_allowed_ips::position.eq(position),
                        api_key_allowed_ips::cidr.eq(cidr),
                    ))
                })
                .collect::<DomainResult<Vec<_>>>()?;
            diesel::insert_into(api_key_allowed_ips::table).values(nets).execute(conn)?;
            Ok(())
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(api_key_id = %id))]
    async fn get(&self, id: ApiKeyId) -> DomainResult<ApiKey> {
        let id = id.to_string();
        self.read("get API key", move |conn| load(conn, &id)).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn find_by_hash(&self, hash: &KeyHash) -> DomainResult<Option<ApiKey>> {
        let hex = hash.to_hex();
        self.read("find API key", move |conn| {
            let rows: Vec<KeyRow> = api_keys::table
                .filter(api_keys::key_hash.eq(&hex).or(api_keys::previous_hash.eq(&hex)))
                .select(KeyRow::as_select())
                .limit(1)
                .load(conn)?;
            Ok(with_networks(conn, rows)?.pop())
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list(&self, page: PageRequest) -> DomainResult<Page<ApiKey>> {
        let after = page.after.map(codec::cursor_id);
        let fetch = i64::from(page.limit.get()) + 1;
        let keys = self
            .read("list API keys", move |conn| {
                let mut query = api_keys::table.select(KeyRow::as_select()).order(api_keys::id.asc()).into_boxed();
                if let Some(after) = after {
                    query = query.filter(api_keys::id.gt(after));
                }
                let rows = query.limit(fetch).load(conn)?;
                with_networks(conn, rows)
            })
            .await?;
        Ok(Page::from_overfetch(keys, page.limit, |k| k.id.as_uuid().as_u128()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(api_key_id = %id))]
    async fn revoke(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<ApiKey> {
        let id = id.to_string();
        self.write("revoke API key", move |conn| {
            // The first revocation time is kept: it is when the key stopped working.
            diesel::update(api_keys::table.find(&id).filter(api_keys::revoked_at.is_null()))
                .set(api_keys::revoked_at.eq(micros(at)))
                .execute(conn)?;
            load(conn, &id)
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(api_key_id = %id))]
    async fn rotate(
        &self,
        id: ApiKeyId,
        hash: KeyHash,
        prefix: &str,
        previous: Option<PreviousSecret>,
    ) -> DomainResult<ApiKey> {
        let id = id.to_string();
        let prefix = prefix.to_owned();
        self.write("rotate API key", move |conn| {
            let revoked: Option<i64> =
                api_keys::table.find(&id).select(api_keys::revoked_at).first(conn).optional()?.ok_or_else(not_found)?;
            if revoked.is_some() {
                return Err(DomainError::Conflict("a revoked key cannot be rotated".into()).into());
            }
            diesel::update(api_keys::table.find(&id))
                .set((
                    api_keys::key_hash.eq(hash.to_hex()),
                    api_keys::prefix.eq(&prefix),
                    api_keys::previous_hash.eq(previous.map(|p| p.hash.to_hex())),
                    api_keys::previous_valid_until.eq(previous.map(|p| micros(p.valid_until))),
                ))
                .execute(conn)?;
            load(conn, &id)
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(api_key_id = %id))]
    async fn touch(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<()> {
        let id = id.to_string();
        self.read("touch API key", move |conn| {
            diesel::update(api_keys::table.find(id)).set(api_keys::last_used_at.eq(micros(at))).execute(conn)?;
            Ok(())
        })
        .await
    }

    async fn count(&self) -> DomainResult<u64> {
        let n: i64 = self.read("count API keys", |conn| Ok(api_keys::table.count().get_result(conn)?)).await?;
        codec::int("count", n)
    }
}
