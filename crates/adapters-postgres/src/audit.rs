//! `AuditLog` on PostgreSQL: the append-only, hash-chained `audit_log` table. Triggers refuse
//! UPDATE, DELETE and TRUNCATE; appends from every replica take one advisory lock in turn, so
//! the chain never forks. (An advisory lock needs no privilege beyond connecting, so the
//! service's role may be limited to INSERT and SELECT on the table.)

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use domain::audit::{seal, AuditCheckpoint, AuditEntry, AuditRecord, GENESIS_HASH};
use domain::ids::AuditId;
use domain::pagination::{Page, PageRequest};
use domain::ports::{AuditFilter, AuditLog};
use domain::DomainResult;

use crate::codec;
use crate::connection::db_error;
use crate::prepared::CachedExt;
use crate::schema::{audit_checkpoints, audit_log};
use crate::{PgStore, StoreError, StoreResult};

/// Taken for the rest of the transaction by every append: "rdevaudt".
const APPEND_LOCK: &str = "SELECT pg_advisory_xact_lock(8242824777110479988)";

sql_rows::audit_rows!(diesel::pg::Pg, crate::codec::PgColumns);

/// Seals `entry` after the last record and stores it, holding the append lock.
async fn append_sealed(conn: &mut AsyncPgConnection, entry: AuditEntry) -> StoreResult<AuditRecord> {
    conn.batch_execute(APPEND_LOCK).await?;
    // A new statement, so its snapshot includes the append that held the lock before us.
    let last: Option<(i64, Vec<u8>)> = audit_log::table
        .order(audit_log::seq.desc())
        .select((audit_log::seq, audit_log::hash))
        .first(conn)
        .await
        .optional()?;
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq, codec::bytes32("hash", hash)?),
        None => (0, GENESIS_HASH),
    };
    // The chain hashes microsecond time; storing the entry as sealed keeps `verify` exact.
    let entry = AuditEntry { at: domain::to_micros_precision(entry.at), ..entry };
    let record = seal(AuditId::generate(), seq + 1, entry, prev);
    diesel::insert_into(audit_log::table).values(AuditRow::from_domain(&record)).cached().execute(conn).await?;
    Ok(record)
}

#[async_trait]
impl AuditLog for PgStore {
    #[tracing::instrument(level = "debug", skip_all, fields(action = %entry.action))]
    async fn append(&self, entry: AuditEntry) -> DomainResult<AuditRecord> {
        let mut conn = self.conn().await?;
        conn.transaction::<_, StoreError, _>(async |conn| append_sealed(conn, entry).await)
            .await
            .map_err(|e| e.into_domain("append audit record"))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list(&self, filter: &AuditFilter, page: PageRequest) -> DomainResult<Page<AuditRecord>> {
        let mut query = audit_log::table.select(AuditRow::as_select()).order(audit_log::seq.asc()).into_boxed();
        if let Some(actor) = filter.actor {
            query = query.filter(audit_log::actor.eq(actor.as_uuid()));
        }
        if let Some(action) = filter.action.clone() {
            query = query.filter(audit_log::action.eq(action));
        }
        if let Some(project) = filter.project.clone() {
            query = query.filter(audit_log::project.eq(project));
        }
        if let Some(since) = filter.since {
            query = query.filter(audit_log::at.ge(since));
        }
        if let Some(until) = filter.until {
            query = query.filter(audit_log::at.lt(until));
        }
        if let Some(outcome) = filter.outcome {
            query = query.filter(audit_log::outcome.eq(outcome.as_str()));
        }
        if let Some(visible) = filter.visible_projects.clone() {
            // `IN` never matches NULL, so records without a project stay hidden too.
            query = query.filter(audit_log::project.eq_any(visible));
        }
        if let Some(after) = page.after.map(codec::cursor_seq) {
            query = query.filter(audit_log::seq.gt(after));
        }
        let mut conn = self.conn().await?;
        let rows = query
            .limit(i64::from(page.limit.get()) + 1)
            .load(&mut conn)
            .await
            .map_err(|e| db_error(e, "list audit records"))?;
        let items = rows.into_iter().map(AuditRow::into_domain).collect::<DomainResult<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |r| seq_key(r.seq)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(after, limit))]
    async fn scan(&self, after: i64, limit: u32) -> DomainResult<Vec<AuditRecord>> {
        let mut conn = self.conn().await?;
        let rows = audit_log::table
            .filter(audit_log::seq.gt(after))
            .order(audit_log::seq.asc())
            .limit(i64::from(limit))
            .select(AuditRow::as_select())
            .load(&mut conn)
            .await
            .map_err(|e| db_error(e, "scan audit records"))?;
        rows.into_iter().map(AuditRow::into_domain).collect()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn latest(&self) -> DomainResult<Option<AuditRecord>> {
        let mut conn = self.conn().await?;
        let row = audit_log::table
            .order(audit_log::seq.desc())
            .select(AuditRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(|e| db_error(e, "read the last audit record"))?;
        row.map(AuditRow::into_domain).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(seq = checkpoint.seq))]
    async fn add_checkpoint(&self, checkpoint: AuditCheckpoint) -> DomainResult<()> {
        let row = CheckpointRow {
            seq: checkpoint.seq,
            hash: checkpoint.hash.to_vec(),
            count: checkpoint.count,
            at: domain::to_micros_precision(checkpoint.at),
            mac: checkpoint.mac.to_vec(),
        };
        let mut conn = self.conn().await?;
        diesel::insert_into(audit_checkpoints::table)
            .values(&row)
            .on_conflict_do_nothing()
            .execute(&mut conn)
            .await
            .map_err(|e| db_error(e, "store audit checkpoint"))?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(after, limit))]
    async fn checkpoints(&self, after: i64, limit: u32) -> DomainResult<Vec<AuditCheckpoint>> {
        let mut conn = self.conn().await?;
        let rows = audit_checkpoints::table
            .filter(audit_checkpoints::seq.gt(after))
            .order(audit_checkpoints::seq.asc())
            .limit(i64::from(limit))
            .select(CheckpointRow::as_select())
            .load(&mut conn)
            .await
            .map_err(|e| db_error(e, "list audit checkpoints"))?;
        rows.into_iter().map(CheckpointRow::into_domain).collect()
    }
}

/// The cursor key of a sequence number (sequences start at 1, so they are never negative).
fn seq_key(seq: i64) -> u128 {
    u128::try_from(seq).unwrap_or_default()
}
