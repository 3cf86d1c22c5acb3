//! `ProjectService`: projects and their settings.

use std::sync::Arc;

use domain::api_key::Scope;
use domain::ids::ProjectId;
use domain::pagination::{Page, PageRequest};
use domain::ports::{Clock, ProjectRepository};
use domain::project::{Project, ProjectName, ProjectPatch, ProjectSettings};
use domain::{DomainError, DomainResult};

use crate::access::Principal;

/// Creates, reads, changes and deletes projects.
pub struct ProjectService {
    repo: Arc<dyn ProjectRepository>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ProjectService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectService").finish_non_exhaustive()
    }
}

impl ProjectService {
    /// A service over `repo`.
    pub fn new(repo: Arc<dyn ProjectRepository>, clock: Arc<dyn Clock>) -> Self {
        Self { repo, clock }
    }

    /// Creates a project. Needs `projects:write`; a key limited to some projects may only
    /// create those.
    pub async fn create(
        &self,
        actor: &Principal,
        name: ProjectName,
        settings: ProjectSettings,
    ) -> DomainResult<Project> {
        actor.require(Scope::ProjectsWrite)?;
        if !actor.projects.allows(&name) {
            return Err(DomainError::Forbidden(format!("this API key may not create project {name}")));
        }
        settings.validate()?;
        let now = self.clock.now();
        let project = Project::from_settings(ProjectId::generate(), name, settings, now, now);
        self.repo.create(&project).await?;
        tracing::info!(project = %project.name, "project created");
        Ok(project)
    }

    /// A visible project. Needs `projects:read`, or any command scope (commands need the project).
    pub async fn get(&self, actor: &Principal, name: &ProjectName) -> DomainResult<Project> {
        actor.require(Scope::ProjectsRead)?;
        self.visible(actor, name).await
    }

    /// A visible project, with no scope check (for other use cases).
    pub async fn visible(&self, actor: &Principal, name: &ProjectName) -> DomainResult<Project> {
        actor.see(name)?;
        self.repo.get(name).await
    }

    /// Visible projects, paged. Needs `projects:read`.
    pub async fn list(&self, actor: &Principal, page: PageRequest) -> DomainResult<Page<Project>> {
        actor.require(Scope::ProjectsRead)?;
        self.repo.list(&actor.projects, page).await
    }

    /// Applies a patch. Needs `projects:write`.
    pub async fn update(&self, actor: &Principal, name: &ProjectName, patch: ProjectPatch) -> DomainResult<Project> {
        actor.require(Scope::ProjectsWrite)?;
        let current = self.visible(actor, name).await?;
        let updated = current.apply(patch, self.clock.now())?;
        self.repo.update(&updated).await?;
        Ok(updated)
    }

    /// Deletes a project with no queued or running commands. Needs `projects:write`.
    pub async fn delete(&self, actor: &Principal, name: &ProjectName) -> DomainResult<()> {
        actor.require(Scope::ProjectsWrite)?;
        actor.see(name)?;
        self.repo.delete(name).await
    }
}
