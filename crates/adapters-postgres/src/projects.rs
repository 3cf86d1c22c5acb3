//! `ProjectRepository` on PostgreSQL: the `projects` table.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use domain::api_key::ProjectAccess;
use domain::command::CommandStatus;
use domain::pagination::{Page, PageRequest};
use domain::ports::ProjectRepository;
use domain::project::{Project, ProjectName};
use domain::{DomainError, DomainResult};

use crate::codec;
use crate::connection::db_error;
use crate::schema::{commands, projects};
use crate::{PgStore, StoreError};

sql_rows::project_rows!(diesel::pg::Pg, crate::codec::PgColumns);

fn not_found() -> DomainError {
    DomainError::NotFound("project".into())
}

#[async_trait]
impl ProjectRepository for PgStore {
    #[tracing::instrument(level = "debug", skip_all, fields(project = %project.name))]
    async fn create(&self, project: &Project) -> DomainResult<()> {
        let row = ProjectRow::from_domain(project)?;
        let mut conn = self.conn().await?;
        let inserted = diesel::insert_into(projects::table)
            .values(&row)
            .on_conflict_do_nothing()
            .execute(&mut conn)
            .await
            .map_err(|e| db_error(e, "create project"))?;
        if inserted == 0 {
            return Err(DomainError::Conflict(format!("project {} already exists", project.name)));
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(project = %name))]
    async fn get(&self, name: &ProjectName) -> DomainResult<Project> {
        let mut conn = self.conn().await?;
        let row = projects::table
            .filter(projects::name.eq(name.as_str()))
            .select(ProjectRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(|e| db_error(e, "get project"))?;
        row.ok_or_else(not_found)?.into_domain()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list(&self, access: &ProjectAccess, page: PageRequest) -> DomainResult<Page<Project>> {
        let visible = access.as_list().map(|names| names.iter().map(|n| n.as_str().to_owned()).collect::<Vec<_>>());
        let mut query = projects::table.select(ProjectRow::as_select()).order(projects::id.asc()).into_boxed();
        if let Some(names) = visible {
            query = query.filter(projects::name.eq_any(names));
        }
        if let Some(after) = page.after.map(codec::cursor_id) {
            query = query.filter(projects::id.gt(after));
        }
        let mut conn = self.conn().await?;
        let rows = query
            .limit(i64::from(page.limit.get()) + 1)
            .load(&mut conn)
            .await
            .map_err(|e| db_error(e, "list projects"))?;
        let items = rows.into_iter().map(ProjectRow::into_domain).collect::<DomainResult<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |p| p.id.as_uuid().as_u128()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(project = %project.name))]
    async fn update(&self, project: &Project) -> DomainResult<()> {
        let row = ProjectRow::from_domain(project)?;
        let mut conn = self.conn().await?;
        // The id and creation time are the project's identity; only settings change.
        let changed = diesel::update(projects::table.filter(projects::name.eq(&row.name)))
            .set((
                projects::image.eq(&row.image),
                projects::workdir.eq(&row.workdir),
                projects::env.eq(&row.env),
                projects::resources.eq(&row.resources),
                projects::max_concurrent_commands.eq(row.max_concurrent_commands),
                projects::default_timeout_seconds.eq(row.default_timeout_seconds),
                projects::max_queued_commands.eq(row.max_queued_commands),
                projects::updated_at.eq(row.updated_at),
            ))
            .execute(&mut conn)
            .await
            .map_err(|e| db_error(e, "update project"))?;
        if changed == 0 {
            return Err(not_found());
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(project = %name))]
    async fn delete(&self, name: &ProjectName) -> DomainResult<()> {
        let name = name.as_str().to_owned();
        let mut conn = self.conn().await?;
        conn.transaction::<_, StoreError, _>(async |conn| {
            // Locking the row waits for enqueues and claims in flight (they lock it too), so
            // the count below sees every command they made.
            let id: Uuid = projects::table
                .filter(projects::name.eq(&name))
                .select(projects::id)
                .for_update()
                .first(conn)
                .await
                .optional()?
                .ok_or_else(not_found)?;
            let live = [CommandStatus::Queued.as_str(), CommandStatus::Running.as_str()];
            let active: i64 = commands::table
                .filter(commands::project_id.eq(id))
                .filter(commands::status.eq_any(live))
                .count()
                .get_result(conn)
                .await?;
            if active > 0 {
                return Err(DomainError::Conflict("the project has queued or running commands".into()).into());
            }
            // Its commands and their events go with it (ON DELETE CASCADE).
            diesel::delete(projects::table.filter(projects::id.eq(id))).execute(conn).await?;
            Ok(())
        })
        .await
        .map_err(|e| e.into_domain("delete project"))
    }
}
