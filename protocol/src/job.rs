//! Jobs: one command sent to many devices, a few at a time, followed to the end.
//!
//! A job is created from a [`NewJob`]: the command (any command the devices announced,
//! its arguments validated per device when its turn comes), the devices it is for (a
//! [`Selector`], resolved once, when the job is created, to a fixed list of targets),
//! how many devices work at once, the failure threshold that halts it, and what to do
//! with devices that are offline when their turn comes. Each target is a [`JobTarget`]
//! that walks `pending → (waiting) → starting → running → succeeded | failed | skipped |
//! cancelled`; the job is `running` or `paused` until it is `completed`, `halted` by its
//! threshold, or `cancelled`. Each device's command is an ordinary command (its
//! [`CommandView::job_id`](crate::api::CommandView::job_id) names the job).

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{CommandId, DeviceId};

/// A job's identity, chosen by the server that created it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct JobId(pub String);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Devices are being commanded.
    Running,
    /// No device is started; those already running finish.
    Paused,
    /// Every device ended (whether its command succeeded or not).
    Completed,
    /// Stopped by its failure threshold: no device was started after that.
    Halted,
    /// Stopped by a user: running commands were cancelled, the rest not started.
    Cancelled,
}

impl JobState {
    pub const ALL: [Self; 5] = [
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::Halted,
        Self::Cancelled,
    ];

    /// Whether the job has ended for good.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Halted | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Halted => "halted",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one device of a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TargetStatus {
    /// Not started yet.
    Pending,
    /// Its turn came while it was offline; started when it comes back (policy `wait`).
    Waiting,
    /// Its command is being sent.
    Starting,
    /// Its command was sent and has not ended.
    Running,
    /// Its command succeeded.
    Succeeded,
    /// Its command ended any other way (failed, rejected, timed out, offline, cancelled
    /// on its own), or could not be sent.
    Failed,
    /// Never commanded: offline when its turn came (policy `skip`), or not back before
    /// the job's wait ended.
    Skipped,
    /// Never commanded, or its command cancelled, because the job was cancelled or
    /// halted.
    Cancelled,
}

impl TargetStatus {
    pub const ALL: [Self; 8] = [
        Self::Pending,
        Self::Waiting,
        Self::Starting,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Skipped,
        Self::Cancelled,
    ];

    /// Whether this device is done with, for this job.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Waiting => "waiting",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for TargetStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which devices a job is for. Every criterion given must hold (a device of `kind` in
/// `group` whose id contains `search`); `ids` adds devices by name. Resolved once,
/// when the job is created, among the devices the creator may see.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Selector {
    /// These devices, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub ids: Vec<DeviceId>,
    /// Every device in this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Every device of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Every device whose id contains this text (as the fleet list's search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    /// Only devices online (`true`) or offline (`false`) when the job is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Every device the creator may see (with the other criteria still applied).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl Selector {
    /// Whether any device is chosen by a criterion other than `ids`.
    pub fn has_filter(&self) -> bool {
        self.all || self.group.is_some() || self.kind.is_some() || self.search.is_some()
    }

    /// Whether a device (its id, kind, groups and presence) passes the filters. Devices
    /// named in `ids` are in whatever the filters say.
    pub fn matches(&self, id: &str, kind: Option<&str>, groups: &[String], online: bool) -> bool {
        self.has_filter()
            && self.group.as_ref().is_none_or(|g| groups.contains(g))
            && self.kind.as_ref().is_none_or(|k| kind == Some(k.as_str()))
            && self
                .search
                .as_ref()
                .is_none_or(|s| id.to_lowercase().contains(&s.to_lowercase()))
            && self.online.is_none_or(|o| o == online)
    }

    /// For people: "group lab, kind gateway", "3 devices by id".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.ids.is_empty() {
            parts.push(format!("{} by id", plural(self.ids.len(), "device")));
        }
        if self.all {
            parts.push("all devices".to_owned());
        }
        if let Some(group) = &self.group {
            parts.push(format!("group {group}"));
        }
        if let Some(kind) = &self.kind {
            parts.push(format!("kind {kind}"));
        }
        if let Some(search) = &self.search {
            parts.push(format!("id contains \"{search}\""));
        }
        match self.online {
            Some(true) => parts.push("online".to_owned()),
            Some(false) => parts.push("offline".to_owned()),
            None => {}
        }
        parts.join(", ")
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// When failures halt a job: after this many devices failed, or this share of all its
/// devices (rounded up, at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    Count(u32),
    Percent(u8),
}

impl Threshold {
    /// How many failed devices halt a job of `total` devices.
    pub fn failures(self, total: u32) -> u32 {
        match self {
            Self::Count(n) => n.max(1),
            Self::Percent(p) => (u64::from(total) * u64::from(p))
                .div_ceil(100)
                .try_into()
                .unwrap_or(u32::MAX)
                .max(1),
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n} failed"),
            Self::Percent(p) => write!(f, "{p} % failed"),
        }
    }
}

/// What happens to a device that is offline when its turn comes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OfflinePolicy {
    /// It is skipped.
    #[default]
    Skip,
    /// It is started when it comes back, until the job's `wait_ms` has passed.
    Wait,
}

/// The bounds of a job's settings, and their defaults.
pub mod limits {
    pub const DEFAULT_CONCURRENCY: u32 = 10;
    pub const MAX_CONCURRENCY: u32 = 1_000;
    /// The most devices one job may command.
    pub const MAX_TARGETS: usize = 100_000;
    pub const MAX_NAME: usize = 100;
    /// How long offline devices are waited for unless asked: an hour after the job
    /// started; at most a week.
    pub const DEFAULT_WAIT_MS: u64 = 3_600_000;
    pub const MAX_WAIT_MS: u64 = 7 * 24 * 3_600_000;
}

/// `POST /api/v1/jobs`: a job to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewJob {
    /// A name for people; the command's name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The command each device is sent.
    pub command: String,
    #[serde(default)]
    pub args: BTreeMap<String, Value>,
    pub targets: Selector,
    /// How many devices run the command at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Halts the job when reached; none: the job runs to the end whatever fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<Threshold>,
    #[serde(default)]
    pub offline: OfflinePolicy,
    /// With `offline: wait`, how long after the job started offline devices are waited
    /// for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// Each device's deadline for its command; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A software update: the artifact each device installs with its built-in `update`
    /// command (`command` must then be `update`, and the server fills in the arguments
    /// for each device: its own download link, the file's SHA-256, size and signature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<crate::artifact::ArtifactId>,
}

fn default_concurrency() -> u32 {
    limits::DEFAULT_CONCURRENCY
}

impl NewJob {
    /// The settings' own checks (the devices and the command are the server's): a
    /// message for people when one is out of bounds.
    pub fn check(&self) -> Result<(), String> {
        if self.command.trim().is_empty() {
            return Err("choose the command to send".into());
        }
        if self.targets.ids.is_empty() && !self.targets.has_filter() {
            return Err("choose the devices: by id, group, kind, a search, or all of them".into());
        }
        if self.targets.ids.len() > limits::MAX_TARGETS {
            return Err(format!(
                "a job may command at most {} devices",
                limits::MAX_TARGETS
            ));
        }
        if let Some(name) = &self.name
            && name.chars().count() > limits::MAX_NAME
        {
            return Err(format!(
                "the name may be at most {} characters",
                limits::MAX_NAME
            ));
        }
        if !(1..=limits::MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "devices at once must be between 1 and {}",
                limits::MAX_CONCURRENCY
            ));
        }
        match self.failure_threshold {
            Some(Threshold::Count(0)) => {
                return Err("the failure threshold must be at least 1 device".into());
            }
            Some(Threshold::Percent(p)) if !(1..=100).contains(&p) => {
                return Err("the failure threshold must be between 1 and 100 %".into());
            }
            _ => {}
        }
        if let Some(wait) = self.wait_ms
            && !(1..=limits::MAX_WAIT_MS).contains(&wait)
        {
            return Err(format!(
                "wait_ms must be between 1 and {} (a week)",
                limits::MAX_WAIT_MS
            ));
        }
        match (
            &self.artifact,
            self.command == crate::capability::builtin::UPDATE,
        ) {
            (Some(_), false) => {
                return Err(format!(
                    "an artifact is installed with the `{}` command",
                    crate::capability::builtin::UPDATE
                ));
            }
            (None, true) => return Err("an update needs the artifact to install".into()),
            (Some(_), true) if !self.args.is_empty() => {
                return Err("an update's arguments are the server's to fill in".into());
            }
            _ => {}
        }
        if let Some(timeout) = self.timeout_ms
            && !(crate::api::timeouts::MIN_MS..=crate::api::timeouts::MAX_MS).contains(&timeout)
        {
            return Err(format!(
                "timeout_ms must be between {} and {}",
                crate::api::timeouts::MIN_MS,
                crate::api::timeouts::MAX_MS
            ));
        }
        Ok(())
    }
}

/// How many of a job's devices are in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobCounts {
    pub total: u32,
    pub pending: u32,
    pub waiting: u32,
    /// Starting or running.
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
    pub cancelled: u32,
}

impl JobCounts {
    fn slot(&mut self, status: TargetStatus) -> &mut u32 {
        match status {
            TargetStatus::Pending => &mut self.pending,
            TargetStatus::Waiting => &mut self.waiting,
            TargetStatus::Starting | TargetStatus::Running => &mut self.running,
            TargetStatus::Succeeded => &mut self.succeeded,
            TargetStatus::Failed => &mut self.failed,
            TargetStatus::Skipped => &mut self.skipped,
            TargetStatus::Cancelled => &mut self.cancelled,
        }
    }

    pub fn add(&mut self, status: TargetStatus, n: u32) {
        *self.slot(status) += n;
    }

    /// A device moved from `from` to `to`.
    pub fn moved(&mut self, from: TargetStatus, to: TargetStatus) {
        let from = self.slot(from);
        *from = from.saturating_sub(1);
        self.add(to, 1);
    }

    /// How many devices are done with.
    pub fn finished(&self) -> u32 {
        self.succeeded + self.failed + self.skipped + self.cancelled
    }
}

/// A job as users see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    pub id: JobId,
    pub name: String,
    pub command: String,
    pub args: BTreeMap<String, Value>,
    /// How its devices were chosen (they were resolved when it was created).
    pub targets: Selector,
    pub concurrency: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<Threshold>,
    pub offline: OfflinePolicy,
    /// How long offline devices are waited for, from `created_ms` (policy `wait`).
    pub wait_ms: u64,
    /// Each device's deadline.
    pub timeout_ms: u64,
    pub state: JobState,
    /// Who created it: the user's name, with `(token <id>)` for an API token.
    pub created_by: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// Why it stopped, when it did not complete: the threshold reached, who cancelled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    pub counts: JobCounts,
    /// For a software update: what is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<JobArtifact>,
}

/// The artifact a software update installs, as it was when the job was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobArtifact {
    pub id: crate::artifact::ArtifactId,
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
    pub size: u64,
    pub signature: String,
}

impl From<&crate::artifact::ArtifactView> for JobArtifact {
    fn from(artifact: &crate::artifact::ArtifactView) -> Self {
        Self {
            id: artifact.id.clone(),
            name: artifact.name.clone(),
            version: artifact.version.clone(),
            arch: artifact.arch.clone(),
            sha256: artifact.sha256.clone(),
            size: artifact.size,
            signature: artifact.signature.clone(),
        }
    }
}

/// One device of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobTarget {
    pub job_id: JobId,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub device_id: DeviceId,
    /// Its place in the job's order (devices are started in this order).
    pub seq: u32,
    pub status: TargetStatus,
    /// Its command, once sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub command_id: Option<CommandId>,
    /// What happened, for people: the command's error or result, why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub updated_ms: u64,
}

/// `GET /api/v1/jobs/{id}/devices`: a page of a job's devices, in job order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct TargetQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TargetStatus>,
    /// Devices whose id contains this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    #[serde(default)]
    pub offset: u32,
    /// 50 unless asked, at most 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl TargetQuery {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 500;

    pub fn limit(&self) -> u32 {
        self.limit
            .unwrap_or(Self::DEFAULT_LIMIT)
            .clamp(1, Self::MAX_LIMIT)
    }
}

/// What a user may do to a job: `POST /api/v1/jobs/{id}/pause` (or `resume`, `cancel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobAction {
    /// Start no more devices (those running finish).
    Pause,
    /// Start devices again.
    Resume,
    /// Cancel the running commands and start no more devices; for good.
    Cancel,
}

impl JobAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
        }
    }
}

/// `GET /api/v1/jobs`: jobs newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct JobListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// The id of the last job of the previous page: older ones come next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// 50 unless asked, at most 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A page of a job's devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TargetPage {
    pub targets: Vec<JobTarget>,
    /// How many devices match the query in all.
    pub total: u32,
    pub offset: u32,
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(targets: Selector) -> NewJob {
        NewJob {
            name: None,
            command: "reboot".into(),
            args: BTreeMap::new(),
            targets,
            concurrency: 5,
            failure_threshold: None,
            offline: OfflinePolicy::Skip,
            wait_ms: None,
            timeout_ms: None,
            artifact: None,
        }
    }

    #[test]
    fn a_percentage_threshold_rounds_up_and_is_at_least_one() {
        assert_eq!(Threshold::Percent(10).failures(300), 30);
        assert_eq!(Threshold::Percent(10).failures(25), 3);
        assert_eq!(Threshold::Percent(1).failures(3), 1);
        assert_eq!(Threshold::Percent(100).failures(7), 7);
        assert_eq!(Threshold::Count(4).failures(2), 4);
    }

    #[test]
    fn settings_out_of_bounds_are_refused() {
        let all = Selector {
            all: true,
            ..Selector::default()
        };
        assert!(job(all.clone()).check().is_ok());
        assert!(
            job(Selector::default()).check().is_err(),
            "no devices chosen"
        );
        let mut zero = job(all.clone());
        zero.concurrency = 0;
        assert!(zero.check().is_err());
        let mut count = job(all.clone());
        count.failure_threshold = Some(Threshold::Count(0));
        assert!(count.check().is_err());
        let mut percent = job(all.clone());
        percent.failure_threshold = Some(Threshold::Percent(101));
        assert!(percent.check().is_err());
        let mut timeout = job(all);
        timeout.timeout_ms = Some(1);
        assert!(timeout.check().is_err());
    }

    #[test]
    fn filters_all_hold_and_ids_alone_match_nothing_else() {
        let groups = vec!["lab".to_owned()];
        let selector = Selector {
            group: Some("lab".into()),
            kind: Some("gateway".into()),
            search: Some("GW".into()),
            ..Selector::default()
        };
        assert!(selector.matches("site-gw-1", Some("gateway"), &groups, true));
        assert!(!selector.matches("site-gw-1", Some("switch"), &groups, true));
        assert!(!selector.matches("site-gw-1", Some("gateway"), &[], true));
        assert!(!selector.matches("thermo", Some("gateway"), &groups, true));
        let by_id = Selector {
            ids: vec![DeviceId::new("a").unwrap()],
            ..Selector::default()
        };
        assert!(!by_id.matches("b", None, &[], true));
    }

    #[test]
    fn counts_follow_moves() {
        let mut counts = JobCounts {
            total: 2,
            pending: 2,
            ..JobCounts::default()
        };
        counts.moved(TargetStatus::Pending, TargetStatus::Starting);
        counts.moved(TargetStatus::Starting, TargetStatus::Running);
        counts.moved(TargetStatus::Running, TargetStatus::Failed);
        assert_eq!((counts.pending, counts.running, counts.failed), (1, 0, 1));
        assert_eq!(counts.finished(), 1);
    }

    #[test]
    fn the_wire_form_is_snake_case() {
        let json = serde_json::to_value(Threshold::Percent(10)).unwrap();
        assert_eq!(json, serde_json::json!({ "percent": 10 }));
        let new: NewJob = serde_json::from_value(serde_json::json!({
            "command": "reboot",
            "targets": { "group": "lab" },
            "offline": "wait",
            "failure_threshold": { "count": 2 }
        }))
        .unwrap();
        assert_eq!(new.concurrency, limits::DEFAULT_CONCURRENCY);
        assert_eq!(new.offline, OfflinePolicy::Wait);
    }
}
