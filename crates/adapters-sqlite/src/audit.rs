//! `AuditLog` on SQLite: the append-only, hash-chained `audit_log` table. Triggers refuse
//! UPDATE and DELETE; appends chain inside a write transaction so the chain never forks.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::SqliteConnection;

use domain::audit::{seal, AuditCheckpoint, AuditEntry, AuditRecord, GENESIS_HASH};
use domain::ids::AuditId;
use domain::pagination::{Page, PageRequest};
use domain::ports::{AuditFilter, AuditLog};
use domain::DomainResult;

use crate::codec::{self, micros};
use crate::schema::{audit_checkpoints, audit_log};
use crate::{SqliteStore, StoreResult};

sql_rows::audit_rows!(diesel::sqlite::Sqlite, crate::codec::SqliteColumns);

/// Seals `entry` after the last record and stores it; the caller holds the write transaction.
pub(crate) fn append_sealed(conn: &mut SqliteConnection, entry: AuditEntry) -> StoreResult<AuditRecord> {
    let last: Option<(i64, Vec<u8>)> = audit_log::table
        .order(audit_log::seq.desc())
        .select((audit_log::seq, audit_log::hash))
        .first(conn)
        .optional()?;
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq, codec::bytes32("hash", hash)?),
        None => (0, GENESIS_HASH),
    };
    // The chain hashes microsecond time; storing the entry as sealed keeps `verify` exact.
    let entry = AuditEntry { at: domain::to_micros_precision(entry.at), ..entry };
    let record = seal(AuditId::generate(), seq + 1, entry, prev);
    diesel::insert_into(audit_log::table).values(AuditRow::from_domain(&record)).execute(conn)?;
    Ok(record)
}

#[async_trait]
impl AuditLog for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all, fields(action = %entry.action))]
    async fn append(&self, entry: AuditEntry) -> DomainResult<AuditRecord> {
        self.write("append audit record", move |conn| append_sealed(conn, entry)).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list(&self, filter: &AuditFilter, page: PageRequest) -> DomainResult<Page<AuditRecord>> {
        let filter = filter.clone();
        let after = page.after.map(codec::cursor_seq);
        let fetch = i64::from(page.limit.get()) + 1;
        let rows = self
            .read("list audit records", move |conn| {
                let mut query = audit_log::table.select(AuditRow::as_select()).order(audit_log::seq.asc()).into_boxed();
                if let Some(actor) = filter.actor {
                    query = query.filter(audit_log::actor.eq(actor.to_string()));
                }
                if let Some(action) = filter.action {
                    query = query.filter(audit_log::action.eq(action));
                }
                if let Some(project) = filter.project {
                    query = query.filter(audit_log::project.eq(project));
                }
                if let Some(since) = filter.since {
                    query = query.filter(audit_log::at.ge(micros(since)));
                }
                if let Some(until) = filter.until {
                    query = query.filter(audit_log::at.lt(micros(until)));
                }
                if let Some(outcome) = filter.outcome {
                    query = query.filter(audit_log::outcome.eq(outcome.as_str()));
                }
                if let Some(visible) = filter.visible_projects {
                    // `IN` never matches NULL, so records without a project stay hidden too.
                    query = query.filter(audit_log::project.eq_any(visible));
                }
                if let Some(after) = after {
                    query = query.filter(audit_log::seq.gt(after));
                }
                Ok(query.limit(fetch).load(conn)?)
            })
            .await?;
        let items = rows.into_iter().map(AuditRow::into_domain).collect::<DomainResult<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |r| seq_key(r.seq)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(after, limit))]
    async fn scan(&self, after: i64, limit: u32) -> DomainResult<Vec<AuditRecord>> {
        let rows = self
            .read("scan audit records", move |conn| {
                Ok(audit_log::table
                    .filter(audit_log::seq.gt(after))
                    .order(audit_log::seq.asc())
                    .limit(i64::from(limit))
                    .select(AuditRow::as_select())
                    .load(conn)?)
            })
            .await?;
        rows.into_iter().map(AuditRow::into_domain).collect()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn latest(&self) -> DomainResult<Option<AuditRecord>> {
        let row = self
            .read("read the last audit record", |conn| {
                Ok(audit_log::table
                    .order(audit_log::seq.desc())
                    .select(AuditRow::as_select())
                    .first(conn)
                    .optional()?)
            })
            .await?;
        row.map(AuditRow::into_domain).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(seq = checkpoint.seq))]
    async fn add_checkpoint(&self, checkpoint: AuditCheckpoint) -> DomainResult<()> {
        let row = CheckpointRow {
            seq: checkpoint.seq,
            hash: checkpoint.hash.to_vec(),
            count: checkpoint.count,
            at: micros(checkpoint.at),
            mac: checkpoint.mac.to_vec(),
        };
        self.write("store audit checkpoint", move |conn| {
            diesel::insert_or_ignore_into(audit_checkpoints::table).values(&row).execute(conn)?;
            Ok(())
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(after, limit))]
    async fn checkpoints(&self, after: i64, limit: u32) -> DomainResult<Vec<AuditCheckpoint>> {
        let rows = self
            .read("list audit checkpoints", move |conn| {
                Ok(audit_checkpoints::table
                    .filter(audit_checkpoints::seq.gt(after))
                    .order(audit_checkpoints::seq.asc())
                    .limit(i64::from(limit))
                    .select(CheckpointRow::as_select())
                    .load(conn)?)
            })
            .await?;
        rows.into_iter().map(CheckpointRow::into_domain).collect()
    }
}

/// The cursor key of a sequence number (sequences start at 1, so they are never negative).
fn seq_key(seq: i64) -> u128 {
    u128::try_from(seq).unwrap_or_default()
}
