//! `ProjectRepository` on SQLite: the `projects` table.

use async_trait::async_trait;
use diesel::prelude::*;

use domain::api_key::ProjectAccess;
use domain::command::CommandStatus;
use domain::pagination::{Page, PageRequest};
use domain::ports::ProjectRepository;
use domain::project::{Project, ProjectName};
use domain::{DomainError, DomainResult};

use crate::codec;
use crate::schema::{command_events, commands, projects};
use crate::SqliteStore;

sql_rows::project_rows!(diesel::sqlite::Sqlite, crate::codec::SqliteColumns);

fn not_found() -> DomainError {
    DomainError::NotFound("project".into())
}

#[async_trait]
impl ProjectRepository for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all, fields(project = %project.name))]
    async fn create(&self, project: &Project) -> DomainResult<()> {
        let row = ProjectRow::from_domain(project)?;
        let name = project.name.clone();
        self.write("create project", move |conn| {
            let taken = projects::table.filter(projects::name.eq(&row.name)).count().get_result::<i64>(conn)? > 0;
            if taken {
                return Err(DomainError::Conflict(format!("project {name} already exists")).into());
            }
            diesel::insert_into(projects::table).values(&row).execute(conn)?;
            Ok(())
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(project = %name))]
    async fn get(&self, name: &ProjectName) -> DomainResult<Project> {
        let name = name.as_str().to_owned();
        let row = self
            .read("get project", move |conn| {
                Ok(projects::table
                    .filter(projects::name.eq(name))
                    .select(ProjectRow::as_select())
                    .first(conn)
                    .optional()?)
            })
            .await?;
        row.ok_or_else(not_found)?.into_domain()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list(&self, access: &ProjectAccess, page: PageRequest) -> DomainResult<Page<Project>> {
        let visible = access.as_list().map(|names| names.iter().map(|n| n.as_str().to_owned()).collect::<Vec<_>>());
        let after = page.after.map(codec::cursor_id);
        let fetch = i64::from(page.limit.get()) + 1;
        let rows = self
            .read("list projects", move |conn| {
                let mut query = projects::table.select(ProjectRow::as_select()).order(projects::id.asc()).into_boxed();
                if let Some(names) = visible {
                    query = query.filter(projects::name.eq_any(names));
                }
                if let Some(after) = after {
                    query = query.filter(projects::id.gt(after));
                }
                Ok(query.limit(fetch).load(conn)?)
            })
            .await?;
        let items = rows.into_iter().map(ProjectRow::into_domain).collect::<DomainResult<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |p| p.id.as_uuid().as_u128()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(project = %project.name))]
    async fn update(&self, project: &Project) -> DomainResult<()> {
        let row = ProjectRow::from_domain(project)?;
        self.write("update project", move |conn| {
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
                .execute(conn)?;
            if changed == 0 {
                return Err(not_found().into());
            }
            Ok(())
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(project = %name))]
    async fn delete(&self, name: &ProjectName) -> DomainResult<()> {
        let name = name.as_str().to_owned();
        self.write("delete project", move |conn| {
            let id: String = projects::table
                .filter(projects::name.eq(&name))
                .select(projects::id)
                .first(conn)
                .optional()?
                .ok_or_else(not_found)?;
            let live = [CommandStatus::Queued.as_str(), CommandStatus::Running.as_str()];
            let active: i64 = commands::table
                .filter(commands::project_id.eq(&id))
                .filter(commands::status.eq_any(live))
                .count()
                .get_result(conn)?;
            if active > 0 {
                return Err(DomainError::Conflict("the project has queued or running commands".into()).into());
            }
            let ids = commands::table.filter(commands::project_id.eq(&id)).select(commands::id);
            diesel::delete(command_events::table.filter(command_events::command_id.eq_any(ids))).execute(conn)?;
            diesel::delete(commands::table.filter(commands::project_id.eq(&id))).execute(conn)?;
            diesel::delete(projects::table.filter(projects::id.eq(&id))).execute(conn)?;
            Ok(())
        })
        .await
    }
}
