//! `ApiKeyRepository` on PostgreSQL: `api_keys` and the key's networks in `api_key_allowed_ips`.

use std::collections::HashMap;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ipnet::IpNet;
use uuid::Uuid;

use domain::api_key::{ApiKey, ApiKeyId, KeyHash, PreviousSecret};
use domain::pagination::{Page, PageRequest};
use domain::ports::ApiKeyRepository;
use domain::{DomainError, DomainResult, Timestamp};

use crate::codec;
use crate::connection::db_error;
use crate::prepared::CachedExt;
use crate::schema::{api_key_allowed_ips, api_keys};
use crate::{PgStore, StoreError, StoreResult};

sql_rows::api_key_rows!(diesel::pg::Pg, crate::codec::PgColumns);

fn not_found() -> DomainError {
    DomainError::NotFound("API key".into())
}

/// Loads the networks of `rows` and builds the keys, in the rows' order.
async fn with_networks(conn: &mut AsyncPgConnection, rows: Vec<KeyRow>) -> StoreResult<Vec<ApiKey>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let nets: Vec<(Uuid, IpNet)> = api_key_allowed_ips::table
        .filter(api_key_allowed_ips::api_key_id.eq_any(&ids))
        .order((api_key_allowed_ips::api_key_id, api_key_allowed_ips::position))
        .select((api_key_allowed_ips::api_key_id, api_key_allowed_ips::cidr))
        .cached()
        .load(conn)
        .await?;
    let mut by_key: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (id, cidr) in nets {
        by_key.entry(id).or_default().push(cidr.to_string());
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
async fn load(conn: &mut AsyncPgConnection, id: Uuid) -> StoreResult<ApiKey> {
    let row =
        api_keys::table.find(id).select(KeyRow::as_select()).first(conn).await.optional()?.ok_or_else(not_found)?;
    with_networks(conn, vec![row]).await?.pop().ok_or_else(|| not_found().into())
}

#[async_trait]
impl ApiKeyRepository for PgStore {
    #[tracing::instrument(level = "debug", skip_all, fields(api_key_id = %key.id))]
    async fn create(&self, key: &ApiKey) -> DomainResult<()> {
        let row = KeyRow::from_domain(key)?;
        let nets = key
            .allowed_ips
            .to_strings()
            .iter()
            .enumerate()
            .map(|(i, cidr)| {
                let position: i32 = codec::column_int("allowed_ips position", i)?;
                let net: IpNet = cidr.parse().map_err(|_| codec::corrupt("allowed_ips", cidr))?;
                Ok((
                    api_key_allowed_ips::api_key_id.eq(row.id),
                    api_key_allowed_ips::position.eq(position),
                    api_key_allowed_ips::cidr.eq(net),
                ))
            })
            .collect::<DomainResult<Vec<_>>>()?;
        let mut conn = self.conn().await?;
        conn.transaction::<_, StoreError, _>(async |conn| {
            diesel::insert_into(api_keys::table).values(&row).execute(conn).await?;
            if !nets.is_empty() {
                diesel::insert_into(api_key_allowed_ips::table).values(&nets).execute(conn).await?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.into_domain("create API key"))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(api_key_id = %id))]
    async fn get(&self, id: ApiKeyId) -> DomainResult<ApiKey> {
        let mut conn = self.conn().await?;
        load(&mut conn, id.as_uuid()).await.map_err(|e| e.into_domain("get API key"))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn find_by_hash(&self, hash: &KeyHash) -> DomainResult<Option<ApiKey>> {
        let hex = hash.to_hex();
        let mut conn = self.conn().await?;
        let found: StoreResult<_> = async {
            let rows: Vec<KeyRow> = api_keys::table
                .filter(api_keys::key_hash.eq(&hex).or(api_keys::previous_hash.eq(&hex)))
                .select(KeyRow::as_select())
                .limit(1)
                .load(&mut conn)
                .await?;
            if rows.is_empty() {
                return Ok(None);
            }
            Ok(with_networks(&mut conn, rows).await?.pop())
        }
        .await;
        found.map_err(|e| e.into_domain("find API key"))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list(&self, page: PageRequest) -> DomainResult<Page<ApiKey>> {
        let mut query = api_keys::table.select(KeyRow::as_select()).order(api_keys::id.asc()).into_boxed();
        if let Some(after) = page.after.map(codec::cursor_id) {
            query = query.filter(api_keys::id.gt(after));
        }
        let mut conn = self.conn().await?;
        let keys: StoreResult<_> = async {
            let rows = query.limit(i64::from(page.limit.get()) + 1).load(&mut conn).await?;
            with_networks(&mut conn, rows).await
        }
        .await;
        let keys = keys.map_err(|e| e.into_domain("list API keys"))?;
        Ok(Page::from_overfetch(keys, page.limit, |k| k.id.as_uuid().as_u128()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(api_key_id = %id))]
    async fn revoke(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<ApiKey> {
        let id = id.as_uuid();
        let mut conn = self.conn().await?;
        let revoked: StoreResult<_> = async {
            // The first revocation time is kept: it is when the key stopped working.
            diesel::update(api_keys::table.find(id).filter(api_keys::revoked_at.is_null()))
                .set(api_keys::revoked_at.eq(at))
                .execute(&mut conn)
                .await?;
            load(&mut conn, id).await
        }
        .await;
        revoked.map_err(|e| e.into_domain("revoke API key"))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(api_key_id = %id))]
    async fn rotate(
        &self,
        id: ApiKeyId,
        hash: KeyHash,
        prefix: &str,
        previous: Option<PreviousSecret>,
    ) -> DomainResult<ApiKey> {
        let id = id.as_uuid();
        let mut conn = self.conn().await?;
        conn.transaction::<_, StoreError, _>(async |conn| {
            let revoked: Option<Timestamp> = api_keys::table
                .find(id)
                .select(api_keys::revoked_at)
                .for_update()
                .first(conn)
                .await
                .optional()?
                .ok_or_else(not_found)?;
            if revoked.is_some() {
                return Err(DomainError::Conflict("a revoked key cannot be rotated".into()).into());
            }
            diesel::update(api_keys::table.find(id))
                .set((
                    api_keys::key_hash.eq(hash.to_hex()),
                    api_keys::prefix.eq(prefix),
                    api_keys::previous_hash.eq(previous.map(|p| p.hash.to_hex())),
                    api_keys::previous_valid_until.eq(previous.map(|p| p.valid_until)),
                ))
                .execute(conn)
                .await?;
            load(conn, id).await
        })
        .await
        .map_err(|e| e.into_domain("rotate API key"))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(api_key_id = %id))]
    async fn touch(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<()> {
        let mut conn = self.conn().await?;
        diesel::update(api_keys::table.find(id.as_uuid()))
            .set(api_keys::last_used_at.eq(at))
            .cached()
            .execute(&mut conn)
            .await
            .map_err(|e| db_error(e, "touch API key"))?;
        Ok(())
    }

    async fn count(&self) -> DomainResult<u64> {
        let mut conn = self.conn().await?;
        let n: i64 = api_keys::table.count().get_result(&mut conn).await.map_err(|e| db_error(e, "count API keys"))?;
        codec::int("count", n)
    }
}
