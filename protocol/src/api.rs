//! What the server tells browsers and scripts: device and command views, live events,
//! and the JSON API's request and error bodies. These never travel over AMQP to devices.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Capabilities, CommandId, CommandStatus, DeviceId};

/// A device as users see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceView {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: DeviceId,
    pub kind: String,
    pub firmware: String,
    pub online: bool,
    /// When it last came online or went offline (ms since the Unix epoch).
    pub since_ms: u64,
    /// When anything was last heard from it.
    pub last_seen_ms: u64,
    pub heartbeat_ms: u64,
    /// Shared with every device that announced the same (a fleet of one kind holds one
    /// copy); on the wire the object itself.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub capabilities: std::sync::Arc<Capabilities>,
    /// The latest accepted reading of each metric, as of this view.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latest: BTreeMap<String, Latest>,
}

/// A metric's latest reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Latest {
    pub value: f64,
    pub ts_ms: u64,
}

/// A command as users see it, at its latest status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandView {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: CommandId,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub device_id: DeviceId,
    pub name: String,
    pub args: BTreeMap<String, Value>,
    #[cfg_attr(feature = "openapi", schema(schema_with = command_status_schema))]
    pub status: CommandStatus,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// When it will be reported as timed out if nothing has ended it.
    pub deadline_ms: u64,
    /// The latest progress: percentage, if the device gave one…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// …and what it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The device's result, once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it did not succeed, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who sent it: the user's name, with `(token <id>)` for an API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<String>,
    /// The job it was sent for, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<crate::job::JobId>,
}

impl CommandView {
    /// Whether this is a later state of the command than `known`: a step on in its
    /// life, or a newer update at the same step (progress). Timestamps alone cannot
    /// tell: several steps often happen within one millisecond.
    pub fn supersedes(&self, known: &CommandView) -> bool {
        if self.status == known.status {
            return self.updated_ms >= known.updated_ms;
        }
        known.status.advance(self.status).is_ok()
    }
}

/// A diagnostics report a device gave (the result of its built-in `diagnostics`
/// command), as listed; the report itself is downloaded apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiagnosticsReport {
    /// The command that collected it: the report's id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub command_id: CommandId,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub device_id: DeviceId,
    /// When it was asked for and when the device answered (ms since the Unix epoch).
    pub requested_ms: u64,
    pub collected_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<String>,
    /// The size of the report, as JSON.
    pub bytes: usize,
}

impl DiagnosticsReport {
    /// The name of the agent's built-in command that collects a report.
    pub const COMMAND: &'static str = crate::capability::builtin::DIAGNOSTICS;

    /// The listing of a succeeded `diagnostics` command; `None` for anything else.
    pub fn of(command: &CommandView) -> Option<Self> {
        if command.name != Self::COMMAND || command.status != CommandStatus::Succeeded {
            return None;
        }
        let report = command.result.as_ref()?;
        Some(Self {
            command_id: command.id.clone(),
            device_id: command.device_id.clone(),
            requested_ms: command.created_ms,
            collected_ms: command.updated_ms,
            issued_by: command.issued_by.clone(),
            bytes: serde_json::to_string(report).map_or(0, |text| text.len()),
        })
    }
}

/// One accepted reading, as the live channel carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reading {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub device_id: DeviceId,
    pub metric: String,
    pub value: f64,
    /// When it was measured (ms since the Unix epoch).
    pub ts_ms: u64,
}

/// One point of a metric's history: the samples of one time bucket, summarised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Point {
    /// The mean time of the bucket's samples (ms since the Unix epoch): a bucket
    /// holding one sample sits exactly at that sample.
    pub t_ms: u64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    /// How many samples the bucket holds.
    pub count: u32,
}

/// One metric's history over a range, with what the device announced about it (its
/// name, unit and range, flattened into this object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    #[serde(flatten)]
    pub spec: crate::MetricSpec,
    /// Oldest first; buckets without samples are absent.
    pub points: Vec<Point>,
}

/// `GET /api/v1/devices/{id}/telemetry`: a device's history, downsampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct History {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub device_id: DeviceId,
    pub from_ms: u64,
    pub to_ms: u64,
    /// The width of one bucket: `to - from` divided by the number of points asked for.
    pub bucket_ms: u64,
    pub series: Vec<Series>,
}

/// The query of `GET /api/v1/devices/{id}/telemetry`, all optional: every announced
/// metric, over the last hour, in [`history::DEFAULT_POINTS`] points.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct HistoryQuery {
    /// One metric; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Start, ms since the Unix epoch (inclusive); an hour before `to` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// End (exclusive); now when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// Most points per metric, 1 to [`history::MAX_POINTS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_points: Option<u32>,
}

/// History requests: points per series unless asked, and the most one may ask for.
pub mod history {
    pub const DEFAULT_POINTS: u32 = 300;
    pub const MAX_POINTS: u32 = 2_000;
    /// The default range: the last hour.
    pub const DEFAULT_SPAN_MS: u64 = 3_600_000;
}

/// What the live channel carries: a snapshot first, then changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    Snapshot {
        devices: Vec<DeviceView>,
        commands: Vec<CommandView>,
    },
    DeviceUpdated {
        device: DeviceView,
    },
    CommandUpdated {
        command: CommandView,
    },
    Telemetry {
        reading: Reading,
    },
    /// A job changed: its state or its counts.
    JobUpdated {
        job: Box<crate::job::JobView>,
    },
    /// One device of a job changed.
    JobTarget {
        target: crate::job::JobTarget,
    },
    /// The page of the fleet list the tab shows (see [`LiveRequest::Fleet`]), when asked
    /// and whenever what it holds changes: which devices, in which order, and the counts.
    FleetPage {
        query: crate::fleet::DeviceQuery,
        page: crate::fleet::DevicePage,
    },
    /// A request the tab sent was not done, and why (`code` as the HTTP API's errors:
    /// `invalid_request`, `invalid_query`, `too_many`, `not_found`). The socket stays
    /// open and everything else the tab asked for stands.
    Refused {
        code: String,
        message: String,
    },
}

/// What a tab tells the live channel it shows. A tab is sent the devices it shows and
/// nothing of the others: the devices of its fleet page and those it watches. It is
/// sent the commands of the devices it watches and of the jobs it follows, and every
/// job's own changes (the jobs list) but the changes of a job's devices only while it
/// follows that job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveRequest {
    /// A device's page: it is sent at once and whenever it changes, and it reports
    /// faster while watched.
    Watch {
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        device_id: DeviceId,
    },
    Unwatch {
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        device_id: DeviceId,
    },
    /// The fleet list with this query (`None`: no longer shown).
    Fleet {
        query: Option<crate::fleet::DeviceQuery>,
    },
    /// A job's page: its devices' changes and its commands are sent from now on.
    Follow {
        job_id: crate::job::JobId,
    },
    Unfollow {
        job_id: crate::job::JobId,
    },
}

/// `GET /api/v1/live?watch=a,b&fleet={query as JSON}&jobs=x,y`: what the tab shows
/// from the start, so that its snapshot already holds it. All optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct LiveParams {
    /// Device ids, separated by commas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<String>,
    /// A [`crate::fleet::DeviceQuery`] as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,
    /// Job ids the tab follows, separated by commas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<String>,
}

/// `POST /api/v1/devices/{id}/commands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendCommand {
    pub name: String,
    #[serde(default)]
    pub args: BTreeMap<String, Value>,
    /// Time the device has to answer; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Every API error: a stable code for programs, a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// Command timeouts: the default, and the bounds a caller may choose within.
pub mod timeouts {
    pub const DEFAULT_MS: u64 = 10_000;
    pub const MIN_MS: u64 = 100;
    pub const MAX_MS: u64 = 300_000;
}

/// The OpenAPI schemas written by hand: a command's status (its enum lives with the
/// device messages) and a series (its metric's fields flattened in).
#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::{
        Object, ObjectBuilder, RefOr, Schema, Type,
        schema::{ArrayBuilder, OneOfBuilder},
    };

    use super::{Point, Series};
    use crate::CommandStatus;

    /// Every status, as written on the wire.
    pub const COMMAND_STATUSES: [CommandStatus; 11] = [
        CommandStatus::Accepted,
        CommandStatus::Sent,
        CommandStatus::Delivered,
        CommandStatus::Progress,
        CommandStatus::Succeeded,
        CommandStatus::Failed,
        CommandStatus::Rejected,
        CommandStatus::Offline,
        CommandStatus::TimedOut,
        CommandStatus::Cancelled,
        CommandStatus::OutcomeUnknown,
    ];

    pub fn command_status_schema() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(COMMAND_STATUSES.iter().map(|s| s.as_str())))
            .description(Some("Where a command is in its life."))
            .build()
    }

    fn number_or_null() -> OneOfBuilder {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::Null))
    }

    impl utoipa::PartialSchema for Series {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .description(Some(
                    "One metric's points: the metric as announced, and its buckets.",
                ))
                .property("name", ObjectBuilder::new().schema_type(Type::String))
                .required("name")
                .property("unit", ObjectBuilder::new().schema_type(Type::String))
                .property("min", number_or_null())
                .property("max", number_or_null())
                .property("points", ArrayBuilder::new().items(Point::schema_ref()))
                .required("points")
                .into()
        }
    }

    impl utoipa::ToSchema for Series {
        fn name() -> std::borrow::Cow<'static, str> {
            "Series".into()
        }

        fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            schemas.push((
                <Point as utoipa::ToSchema>::name().into_owned(),
                <Point as utoipa::PartialSchema>::schema(),
            ));
        }
    }

    trait SchemaRef {
        fn schema_ref() -> RefOr<Schema>;
    }

    impl<T: utoipa::ToSchema> SchemaRef for T {
        fn schema_ref() -> RefOr<Schema> {
            RefOr::Ref(utoipa::openapi::Ref::from_schema_name(T::name()))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_status_schema_lists_every_status() {
            for status in COMMAND_STATUSES {
                // A new status breaks this match: add it to COMMAND_STATUSES too.
                match status {
                    CommandStatus::Accepted
                    | CommandStatus::Sent
                    | CommandStatus::Delivered
                    | CommandStatus::Progress
                    | CommandStatus::Succeeded
                    | CommandStatus::Failed
                    | CommandStatus::Rejected
                    | CommandStatus::Offline
                    | CommandStatus::TimedOut
                    | CommandStatus::Cancelled
                    | CommandStatus::OutcomeUnknown => {}
                }
                assert_eq!(
                    serde_json::to_value(status).unwrap(),
                    serde_json::json!(status.as_str())
                );
            }
        }
    }
}

#[cfg(feature = "openapi")]
use openapi::command_status_schema;
