//! The jobs API (`/api/v1/jobs`, API.md): create a job over devices chosen by id,
//! group, kind or a search, list and read jobs and their devices, pause, resume and
//! cancel. The devices are chosen here, among those the caller may see; the `jobs`
//! crate runs the job. Operators start and change jobs; everything is audited.
//!
//! Who sees a job: an admin every job, anyone else a job whose every device they may
//! see (so nothing of a device outside their groups shows, not even in the counts).

use crate::openapi::shared;
use protocol::api::{ApiError, ErrorCode};
use std::collections::{BTreeMap, HashSet};
use utoipa_axum::{router::OpenApiRouter, routes};

use ::jobs::JobError;
use axum::{Json, extract::State, http::StatusCode};
use protocol::{
    DeviceId,
    api::DeviceView,
    auth::Role,
    job::{JobAction, JobArtifact, JobId, JobListQuery, JobView, NewJob, TargetPage, TargetQuery},
};
use store::JobQuery;

use crate::{
    api::{Body, Params, PathId},
    audit,
    auth::{Identity, Source},
    error::{Failure, parse_device_id},
    state::AppState,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs, create_job))
        .routes(routes!(get_job))
        .routes(routes!(job_devices))
        .routes(routes!(pause_job))
        .routes(routes!(resume_job))
        .routes(routes!(cancel_job))
}

impl From<JobError> for Failure {
    fn from(error: JobError) -> Self {
        let (status, code) = match &error {
            JobError::Unknown(_) => (StatusCode::NOT_FOUND, ErrorCode::UnknownJob),
            JobError::Finished(_) => (StatusCode::CONFLICT, ErrorCode::AlreadyEnded),
            JobError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidJob),
            JobError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ServerStopping),
            JobError::Store(cause) => {
                tracing::error!("jobs: {cause:#}");
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StoreUnavailable)
            }
        };
        Self::new(status, code, error.to_string())
    }
}

fn unknown_job(id: &JobId) -> Failure {
    JobError::Unknown(id.clone()).into()
}

/// The job id in the path.
fn job_id(PathId(id): PathId) -> JobId {
    JobId(id)
}

#[utoipa::path(
get, path = "/v1/jobs", tag = "jobs",
summary = "Jobs the caller may see, newest first",
params(JobListQuery),
responses(
    (status = 200, description = "The jobs", body = Vec<JobView>),
    (status = 400, description = "`bad_request`: `before` names no job, or a query that does not parse", body = ApiError),
    shared::StoreUnavailable,
)
)]
async fn list_jobs(
    State(state): State<AppState>,
    who: Identity,
    Params(query): Params<JobListQuery>,
) -> Result<Json<Vec<JobView>>, Failure> {
    list(&state, &who, query).await.map(Json)
}

#[utoipa::path(
get, path = "/v1/jobs/{id}", tag = "jobs",
summary = "One job",
params(("id" = String, Path, description = "The job's id")),
responses(
    (status = 200, description = "The job", body = JobView),
    shared::UnknownJob,
    shared::StoreUnavailable,
)
)]
async fn get_job(
    State(state): State<AppState>,
    who: Identity,
    id: PathId,
) -> Result<Json<JobView>, Failure> {
    get(&state, &who, &job_id(id)).await.map(Json)
}

#[utoipa::path(
get, path = "/v1/jobs/{id}/devices", tag = "jobs",
summary = "A page of a job's devices, in start order",
params(("id" = String, Path, description = "The job's id"), TargetQuery),
responses(
    (status = 200, description = "The page", body = TargetPage),
    shared::UnknownJob,
    shared::StoreUnavailable,
)
)]
async fn job_devices(
    State(state): State<AppState>,
    who: Identity,
    id: PathId,
    Params(query): Params<TargetQuery>,
) -> Result<Json<TargetPage>, Failure> {
    targets(&state, &who, &job_id(id), query).await.map(Json)
}

#[utoipa::path(
post, path = "/v1/jobs", tag = "jobs",
summary = "Start a job: one command sent to many devices",
description = "Needs the operator role. The devices are chosen once, among those the caller may see.",
request_body = NewJob,
responses(
    (status = 201, description = "The job, running", body = JobView),
    shared::OperatorOnly,
    (status = 404, description = "`unknown_device`: an id the caller may not see; `unknown_artifact`: the job names no artifact", body = ApiError),
    (status = 422, description = "`invalid_job`: settings out of bounds, no device matches; `unknown_command`: no chosen device announced it; `invalid_arguments`: no device that announced it accepts them", body = ApiError),
    (status = 503, description = "`store_unavailable`; `server_stopping`", body = ApiError),
)
)]
async fn create_job(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    Body(new): Body<NewJob>,
) -> Result<(StatusCode, Json<JobView>), Failure> {
    let job = create(&state, &who, &address, new).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

#[utoipa::path(
post, path = "/v1/jobs/{id}/pause", tag = "jobs",
summary = "Pause a job",
description = "Needs the operator role.",
params(("id" = String, Path, description = "The job's id")),
responses(
    (status = 200, description = "The job", body = JobView),
    shared::OperatorOnly,
    shared::UnknownJob,
    (status = 409, description = "`already_ended`: the job has ended", body = ApiError),
    (status = 503, description = "`store_unavailable`; `server_stopping`", body = ApiError),
)
)]
async fn pause_job(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    id: PathId,
) -> Result<Json<JobView>, Failure> {
    control(&state, &who, &address, &job_id(id), JobAction::Pause)
        .await
        .map(Json)
}

#[utoipa::path(
post, path = "/v1/jobs/{id}/resume", tag = "jobs",
summary = "Resume a job",
description = "Needs the operator role.",
params(("id" = String, Path, description = "The job's id")),
responses(
    (status = 200, description = "The job", body = JobView),
    shared::OperatorOnly,
    shared::UnknownJob,
    (status = 409, description = "`already_ended`: the job has ended", body = ApiError),
    (status = 503, description = "`store_unavailable`; `server_stopping`", body = ApiError),
)
)]
async fn resume_job(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    id: PathId,
) -> Result<Json<JobView>, Failure> {
    control(&state, &who, &address, &job_id(id), JobAction::Resume)
        .await
        .map(Json)
}

#[utoipa::path(
post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
summary = "Cancel a job",
description = "Needs the operator role.",
params(("id" = String, Path, description = "The job's id")),
responses(
    (status = 200, description = "The job", body = JobView),
    shared::OperatorOnly,
    shared::UnknownJob,
    (status = 409, description = "`already_ended`: the job has ended", body = ApiError),
    (status = 503, description = "`store_unavailable`; `server_stopping`", body = ApiError),
)
)]
async fn cancel_job(
    State(state): State<AppState>,
    who: Identity,
    Source(address): Source,
    id: PathId,
) -> Result<Json<JobView>, Failure> {
    control(&state, &who, &address, &job_id(id), JobAction::Cancel)
        .await
        .map(Json)
}

/// Whether `who` may see every device of the job.
pub async fn may_see(state: &AppState, who: &Identity, id: &JobId) -> Result<bool, Failure> {
    if who.role == Role::Admin {
        return Ok(true);
    }
    let devices = state
        .accounts
        .job_devices(&id.0)
        .await
        .map_err(JobError::Store)?;
    Ok(devices.iter().all(|d| state.groups.may_see(who, d)))
}

/// Jobs newest first, as far as `who` may see them.
pub async fn list(
    state: &AppState,
    who: &Identity,
    query: JobListQuery,
) -> Result<Vec<JobView>, Failure> {
    let before = match &query.before {
        None => None,
        Some(id) => {
            let job = state
                .accounts
                .job(id)
                .await
                .map_err(JobError::Store)?
                .ok_or_else(|| {
                    Failure::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadRequest,
                        format!("`before` names no job: \"{id}\""),
                    )
                })?;
            Some((job.view.created_ms, job.view.id.0))
        }
    };
    let limit = query.limit.unwrap_or(50).clamp(1, 500) as usize;
    let mut jobs = state
        .accounts
        .jobs(JobQuery {
            state: query.state,
            before,
            limit,
        })
        .await
        .map_err(JobError::Store)?;
    if who.role != Role::Admin {
        let mut visible = Vec::with_capacity(jobs.len());
        for job in jobs {
            if may_see(state, who, &job.id).await? {
                visible.push(job);
            }
        }
        jobs = visible;
    }
    Ok(jobs)
}

/// One job, if `who` may see it.
pub async fn get(state: &AppState, who: &Identity, id: &JobId) -> Result<JobView, Failure> {
    let job = state.jobs.get(id).await?;
    if !may_see(state, who, id).await? {
        return Err(unknown_job(id));
    }
    Ok(job)
}

/// A page of a job's devices.
pub async fn targets(
    state: &AppState,
    who: &Identity,
    id: &JobId,
    query: TargetQuery,
) -> Result<TargetPage, Failure> {
    get(state, who, id).await?;
    Ok(state
        .accounts
        .job_targets(&id.0, &query)
        .await
        .map_err(JobError::Store)?)
}

/// Creates and starts a job as `who` (an operator), over the devices its selection
/// names among those `who` may see; audited whether it started or not.
pub async fn create(
    state: &AppState,
    who: &Identity,
    address: &str,
    new: NewJob,
) -> Result<JobView, Failure> {
    let detail = serde_json::json!({
        "name": new.name,
        "command": new.command,
        "args": new.args,
        "targets": new.targets.describe(),
    })
    .to_string();
    if let Err(refused) = who.require(Role::Operator, "starting jobs") {
        audit::record(state, &who.actor(), address, "job_refused", "", &detail).await;
        return Err(refused);
    }
    let created = async {
        new.check().map_err(|message| {
            Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidJob,
                message,
            )
        })?;
        let devices = choose(state, who, &new)?;
        let artifact = match &new.artifact {
            None => None,
            Some(id) => {
                let artifact = state
                    .accounts
                    .artifact(&id.0)
                    .await
                    .map_err(JobError::Store)?
                    .ok_or_else(|| {
                        Failure::new(
                            StatusCode::NOT_FOUND,
                            ErrorCode::UnknownArtifact,
                            format!("no artifact \"{id}\""),
                        )
                    })?;
                Some(JobArtifact::from(&artifact))
            }
        };
        let args = match &artifact {
            None => new.args.clone(),
            Some(artifact) => update_args(artifact),
        };
        check_command(state, &new.command, &args, &devices)?;
        Ok::<_, Failure>(
            state
                .jobs
                .create(new, devices, who.actor(), artifact)
                .await?,
        )
    }
    .await;
    match &created {
        Ok(job) => {
            let detail = format!("{} devices: {detail}", job.counts.total);
            audit::record(
                state,
                &who.actor(),
                address,
                "job_created",
                &job.id.0,
                &detail,
            )
            .await;
        }
        Err(failure) => {
            let detail = format!("{detail}: {}", failure.1.message);
            audit::record(state, &who.actor(), address, "job_failed", "", &detail).await;
        }
    }
    created
}

/// The devices a new job is for, in order: those named by id, then those the filters
/// match (sorted by id), each once, all of them visible to `who`.
fn choose(state: &AppState, who: &Identity, new: &NewJob) -> Result<Vec<DeviceId>, Failure> {
    let selector = &new.targets;
    let mut chosen = Vec::new();
    let mut seen = HashSet::new();
    for id in &selector.ids {
        let id = parse_device_id(id.as_str())?;
        if !state.groups.may_see(who, id.as_str()) {
            return Err(Failure::unknown_device(&id));
        }
        if seen.insert(id.clone()) {
            chosen.push(id);
        }
    }
    if selector.has_filter() {
        let known = state.hub.devices();
        for device in &known {
            let groups = state.groups.of(device.id.as_str());
            if state.groups.may_see(who, device.id.as_str())
                && selector.matches(
                    device.id.as_str(),
                    Some(&device.kind),
                    &groups,
                    device.online,
                )
                && seen.insert(device.id.clone())
            {
                chosen.push(device.id.clone());
            }
        }
        // A group's devices this server has not heard from yet: offline, of no known kind.
        if let Some(group) = &selector.group {
            for member in state.groups.members(group) {
                let Ok(id) = DeviceId::new(member) else {
                    continue;
                };
                let groups = state.groups.of(id.as_str());
                if state.groups.may_see(who, id.as_str())
                    && selector.matches(id.as_str(), None, &groups, false)
                    && seen.insert(id.clone())
                {
                    chosen.push(id);
                }
            }
        }
    }
    if chosen.is_empty() {
        return Err(Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidJob,
            format!(
                "no device you may see matches the selection ({})",
                selector.describe()
            ),
        ));
    }
    Ok(chosen)
}

/// The command must be one some chosen device announced, with arguments it accepts:
/// otherwise nothing of the job could work. Each device checks again when its turn
/// comes (devices of other kinds or firmware may differ).
fn check_command(
    state: &AppState,
    command: &str,
    args: &BTreeMap<String, serde_json::Value>,
    devices: &[DeviceId],
) -> Result<(), Failure> {
    let announcing: Vec<DeviceView> = devices
        .iter()
        .filter_map(|id| state.hub.device(id))
        .filter(|device| device.capabilities.command(command).is_some())
        .collect();
    let Some(first) = announcing.first() else {
        return Err(Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::UnknownCommand,
            format!(
                "none of the {} chosen devices announced a command \"{command}\"",
                devices.len(),
            ),
        ));
    };
    let mut first_error = None;
    for device in &announcing {
        if let Some(spec) = device.capabilities.command(command) {
            match spec.validate(args) {
                Ok(_) => return Ok(()),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
    }
    let error = first_error.map_or_else(String::new, |e| e.to_string());
    Err(Failure::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::InvalidArguments,
        format!("{error} (as device \"{}\" announced it)", first.id),
    ))
}

/// The arguments of an update's command as every device gets them, but for the link
/// (each device's own): to check them against what the devices announced.
fn update_args(artifact: &JobArtifact) -> BTreeMap<String, serde_json::Value> {
    BTreeMap::from([
        (
            "url".to_owned(),
            "http://tether.invalid/api/v1/artifacts/download".into(),
        ),
        ("sha256".to_owned(), artifact.sha256.clone().into()),
        ("size".to_owned(), artifact.size.into()),
        ("version".to_owned(), artifact.version.clone().into()),
        ("signature".to_owned(), artifact.signature.clone().into()),
        ("arch".to_owned(), artifact.arch.clone().into()),
    ])
}

/// Pauses, resumes or cancels a job as `who` (an operator who may see it), audited.
pub async fn control(
    state: &AppState,
    who: &Identity,
    address: &str,
    id: &JobId,
    action: JobAction,
) -> Result<JobView, Failure> {
    get(state, who, id).await?;
    if let Err(refused) = who.require(Role::Operator, "changing jobs") {
        let action = format!("job_{}_refused", action.as_str());
        audit::record(state, &who.actor(), address, &action, &id.0, "").await;
        return Err(refused);
    }
    let changed = state.jobs.control(id, action, &who.actor()).await;
    let done = match action {
        JobAction::Pause => "job_paused",
        JobAction::Resume => "job_resumed",
        JobAction::Cancel => "job_cancelled",
    };
    let (name, detail) = match &changed {
        Ok(job) => (done.to_owned(), job.state.to_string()),
        Err(error) => (format!("job_{}_failed", action.as_str()), error.to_string()),
    };
    audit::record(state, &who.actor(), address, &name, &id.0, &detail).await;
    Ok(changed?)
}
