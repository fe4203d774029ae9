//! The fleet as the UI's server functions see it ([`app::fleet::Fleet`]): the same
//! operations, checks and errors as the JSON API (the same functions do the work), with
//! the caller found in the request the server function serves.

use app::fleet::{Answer, AuditFilter, Caller, Fleet, NewUser, Provisioned, UserChange};
use axum::extract::{Path, State};
use protocol::{
    CommandId,
    api::{
        ApiError, CommandView, DeviceView, DiagnosticsReport, History, HistoryQuery, SendCommand,
    },
    artifact::ArtifactView,
    auth::{AuditCheck, AuditEntry, DeviceCredential, Me, NewToken, Role, TokenView, UserView},
    fleet::{DevicePage, DeviceQuery},
    job::{JobAction, JobId, JobListQuery, JobView, NewJob, TargetPage, TargetQuery},
};

use crate::{
    admin,
    api::{self, Body, Params},
    auth::{self, Identity, Source},
    error::{Failure, parse_device_id},
    history, jobs, provision,
    state::AppState,
};

/// Who the request is from, or the API's 401.
fn caller(parts: &Caller) -> Result<(Identity, Source), ApiError> {
    let who = auth::identity(parts).map_err(Failure::into_api_error)?;
    Ok((who.clone(), auth::source(parts)))
}

fn api_error(failure: Failure) -> ApiError {
    failure.into_api_error()
}

impl Fleet for AppState {
    fn me(&self, parts: &Caller) -> Result<Me, ApiError> {
        Ok(caller(parts)?.0.me())
    }

    fn device_page(&self, parts: &Caller, query: &DeviceQuery) -> Result<DevicePage, ApiError> {
        api::device_page(self, &caller(parts)?.0, query).map_err(api_error)
    }

    fn device(&self, parts: &Caller, id: &str) -> Result<Option<DeviceView>, ApiError> {
        let (who, _) = caller(parts)?;
        Ok(parse_device_id(id)
            .ok()
            .and_then(|id| api::device(self, &who, &id).ok()))
    }

    fn recent_commands(
        &self,
        parts: Caller,
        device: String,
        limit: usize,
    ) -> Answer<'_, Vec<CommandView>> {
        Box::pin(async move {
            let (who, _) = caller(&parts)?;
            match parse_device_id(&device) {
                Ok(id) if api::device(self, &who, &id).is_ok() => {
                    api::command_history(self, &who, Some(&id), None, limit)
                        .await
                        .map_err(api_error)
                }
                _ => Ok(Vec::new()),
            }
        })
    }

    fn send_command(
        &self,
        parts: Caller,
        device: String,
        request: SendCommand,
    ) -> Answer<'_, CommandView> {
        Box::pin(async move {
            let (who, Source(address)) = caller(&parts)?;
            let device = parse_device_id(&device).map_err(api_error)?;
            api::send(self, &who, &address, &device, request)
                .await
                .map_err(api_error)
        })
    }

    fn cancel_command(&self, parts: Caller, id: String) -> Answer<'_, CommandView> {
        Box::pin(async move {
            let (who, Source(address)) = caller(&parts)?;
            api::cancel(self, &who, &address, &CommandId(id))
                .await
                .map_err(api_error)
        })
    }

    fn diagnostics_reports(
        &self,
        parts: Caller,
        device: String,
    ) -> Answer<'_, Vec<DiagnosticsReport>> {
        Box::pin(async move {
            let (who, _) = caller(&parts)?;
            let device = parse_device_id(&device).map_err(api_error)?;
            crate::diagnostics::reports(self, &who, &device, 20)
                .await
                .map_err(api_error)
        })
    }

    fn history(&self, parts: Caller, device: String, query: HistoryQuery) -> Answer<'_, History> {
        Box::pin(async move {
            let (who, _) = caller(&parts)?;
            let device = parse_device_id(&device).map_err(api_error)?;
            api::device(self, &who, &device).map_err(api_error)?;
            history::read(&self.hub, self.store.as_ref(), &device, query)
                .await
                .map_err(|e| api_error(e.into()))
        })
    }

    fn tokens(&self, parts: Caller) -> Answer<'_, Vec<TokenView>> {
        Box::pin(async move {
            let (who, _) = caller(&parts)?;
            let owner = admin::Owner { owner: None };
            let tokens = admin::list_tokens(State(self.clone()), who, Params(owner));
            Ok(tokens.await.map_err(api_error)?.0)
        })
    }

    fn create_token(&self, parts: Caller, name: String, role: Role) -> Answer<'_, NewToken> {
        Box::pin(async move {
            let (who, source) = caller(&parts)?;
            let request = admin::TokenRequest {
                name,
                role: Some(role),
                owner: None,
            };
            let created = admin::create_token(State(self.clone()), who, source, Body(request));
            Ok(created.await.map_err(api_error)?.1.0)
        })
    }

    fn revoke_token(&self, parts: Caller, id: String) -> Answer<'_, TokenView> {
        Box::pin(async move {
            let (who, source) = caller(&parts)?;
            let revoked = admin::revoke_token(State(self.clone()), who, source, Path(id));
            Ok(revoked.await.map_err(api_error)?.0)
        })
    }

    fn users(&self, parts: Caller) -> Answer<'_, Vec<UserView>> {
        Box::pin(async move {
            let (who, _) = caller(&parts)?;
            let users = admin::list_users(State(self.clone()), who);
            Ok(users.await.map_err(api_error)?.0)
        })
    }

    fn create_user(&self, parts: Caller, user: NewUser) -> Answer<'_, UserView> {
        Box::pin(async move {
            let (who, source) = caller(&parts)?;
            let created = admin::create_user(State(self.clone()), who, source, Body(user));
            Ok(created.await.map_err(api_error)?.1.0)
        })
    }

    fn change_user(&self, parts: Caller, name: String, change: UserChange) -> Answer<'_, UserView> {
        Box::pin(async move {
            let (who, source) = caller(&parts)?;
            let changed =
                admin::change_user(State(self.clone()), who, source, Path(name), Body(change));
            Ok(changed.await.map_err(api_error)?.0)
        })
    }

    fn audit(&self, parts: Caller, filter: AuditFilter) -> Answer<'_, Vec<AuditEntry>> {
        Box::pin(async move {
            let (who, _) = caller(&parts)?;
            let entries = admin::audit_trail(State(self.clone()), who, Params(filter));
            Ok(entries.await.map_err(api_error)?.0)
        })
    }

    fn audit_verify(&self, parts: Caller) -> Answer<'_, AuditCheck> {
        Box::pin(async move {
            let (who, _) = caller(&parts)?;
            let check = admin::verify_audit(State(self.clone()), who);
            Ok(check.await.map_err(api_error)?.0)
        })
    }

    fn provisioned_devices(&self, parts: Caller) -> Answer<'_, Vec<Provisioned>> {
        Box::pin(async move {
            let (who, _) = caller(&parts)?;
            let devices = provision::list(self, &who).await.map_err(api_error)?;
            Ok(devices
                .into_iter()
                .map(|device| {
                    let online = protocol::DeviceId::new(device.id.as_str())
                        .ok()
                        .and_then(|id| self.hub.device(&id))
                        .map(|seen| seen.online);
                    Provisioned { device, online }
                })
                .collect())
        })
    }

    fn provision_device(&self, parts: Caller, id: String) -> Answer<'_, DeviceCredential> {
        Box::pin(async move {
            let (who, Source(address)) = caller(&parts)?;
            provision::provision(self, &who, &address, &id)
                .await
                .map_err(api_error)
        })
    }

    fn rotate_device_secret(&self, parts: Caller, id: String) -> Answer<'_, DeviceCredential> {
        Box::pin(async move {
            let (who, Source(address)) = caller(&parts)?;
            provision::rotate(self, &who, &address, &id)
                .await
                .map_err(api_error)
        })
    }

    fn revoke_device(&self, parts: Caller, id: String) -> Answer<'_, ()> {
        Box::pin(async move {
            let (who, Source(address)) = caller(&parts)?;
            provision::revoke(self, &who, &address, &id)
                .await
                .map_err(api_error)
        })
    }

    fn jobs(&self, parts: Caller, query: JobListQuery) -> Answer<'_, Vec<JobView>> {
        Box::pin(async move {
            let (who, _) = caller(&parts)?;
            jobs::list(self, &who, query).await.map_err(api_error)
        })
    }

    fn job(&self, parts: Caller, id: String) -> Answer<'_, JobView> {
        Box::pin(async move {
            let (who, _) = caller(&parts)?;
            jobs::get(self, &who, &JobId(id)).await.map_err(api_error)
        })
    }

    fn job_targets(&self, parts: Caller, id: String, query: TargetQuery) -> Answer<'_, TargetPage> {
        Box::pin(async move {
            let (who, _) = caller(&parts)?;
            jobs::targets(self, &who, &JobId(id), query)
                .await
                .map_err(api_error)
        })
    }

    fn job_preview(
        &self,
        parts: &Caller,
        selector: &protocol::job::Selector,
    ) -> Result<app::jobs::new::Known, ApiError> {
        let (who, _) = caller(parts)?;
        let members: Option<std::collections::HashSet<String>> = selector
            .group
            .as_ref()
            .map(|group| self.groups.members(group).into_iter().collect());
        // Over the hub's devices as they are, without copying the fleet for each keystroke.
        Ok(self.hub.with_devices(|devices| {
            app::jobs::new::known(
                selector,
                devices.filter(|d| {
                    self.groups.may_see(&who, d.id.as_str())
                        && members.as_ref().is_none_or(|m| m.contains(d.id.as_str()))
                }),
            )
        }))
    }

    fn create_job(&self, parts: Caller, job: NewJob) -> Answer<'_, JobView> {
        Box::pin(async move {
            let (who, Source(address)) = caller(&parts)?;
            jobs::create(self, &who, &address, job)
                .await
                .map_err(api_error)
        })
    }

    fn control_job(&self, parts: Caller, id: String, action: JobAction) -> Answer<'_, JobView> {
        Box::pin(async move {
            let (who, Source(address)) = caller(&parts)?;
            jobs::control(self, &who, &address, &JobId(id), action)
                .await
                .map_err(api_error)
        })
    }

    fn artifacts(&self, parts: Caller) -> Answer<'_, Vec<ArtifactView>> {
        Box::pin(async move {
            caller(&parts)?;
            crate::artifacts::all(self).await.map_err(api_error)
        })
    }

    fn update_signing_key(&self, parts: &Caller) -> Result<String, ApiError> {
        caller(parts)?;
        Ok(self.artifacts.public_key())
    }
}
