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
    /// Its last hello, if servers dropped it for breaking a rule of the protocol (a
    /// device set up wrong: what it announced there is not in effect); absent once a
    /// hello is taken again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello_refused: Option<RefusedHello>,
}

/// A hello servers dropped, and why: what a device set up wrong needs fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RefusedHello {
    /// When it arrived (ms since the Unix epoch).
    pub at_ms: u64,
    /// Its first problems, e.g. `metric name "cpu.load" must be 1–64 ASCII letters, …`.
    pub problem: String,
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
    /// A request the tab sent was not done, and why (`code` an `ErrorCode`, as the HTTP
    /// API's errors: `invalid_request`, `invalid_query`, `too_many`, `not_found`,
    /// `store_unavailable`). The socket stays open and everything else the tab asked
    /// for stands.
    Refused {
        #[cfg_attr(feature = "openapi", schema(value_type = ErrorCode))]
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
    // Kept as the text that came, so that a client built against this version (the
    // browser's) still reads an error of a newer server whose code it does not know
    // (`error_code` is then `None`). The server only ever sends an `ErrorCode`
    // (`ApiError::new`), and the OpenAPI document gives `code` as that enum.
    #[cfg_attr(feature = "openapi", schema(value_type = ErrorCode))]
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.as_str().to_owned(),
            message: message.into(),
        }
    }

    /// The code, if this version knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }
}

/// Defines [`ErrorCode`]: each variant's doc comment (its HTTP statuses first) is also
/// its description in the OpenAPI document, and its text on the wire is checked
/// against serde's by the tests.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])+ $variant:ident = $text:literal,)+) => {
        /// Every `code` the server puts in an [`ApiError`] (and in a live channel's
        /// `refused` event or `end`), as it is written on the wire: snake_case text.
        /// A new code is a new variant here, so the server cannot send one that is not
        /// documented.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl ErrorCode {
            /// Every code, in the order they are documented.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The code as written on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)+
                }
            }

            /// What the code means and the HTTP statuses it comes with, for people.
            pub fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => concat!($($doc),+).trim(),)+
                }
            }
        }
    };
}

error_codes! {
    /// 409: the command or job already ended (also a cancel of a command whose replica is
    /// gone: it ends at once as `outcome_unknown`).
    AlreadyEnded = "already_ended",
    /// 409: a user or provisioned device of that name already exists.
    AlreadyExists = "already_exists",
    /// 413: the uploaded artifact is over `TETHER_MAX_ARTIFACT_MB`.
    ArtifactTooLarge = "artifact_too_large",
    /// 400: a query or path parameter that does not parse, a body that is not JSON, a
    /// `before` that names nothing; 415: a JSON body without its content type; 422: a
    /// JSON body of the wrong shape.
    BadRequest = "bad_request",
    /// 400, 405, 426: a WebSocket upgrade without the right method, version or headers.
    BadUpgrade = "bad_upgrade",
    /// 503: the broker link is down; try again shortly.
    BrokerUnavailable = "broker_unavailable",
    /// 403: a request that changes something, or an upgrade, from another site's page.
    CrossSite = "cross_site",
    /// 409: the device is offline; the command was not sent.
    DeviceOffline = "device_offline",
    /// 403: the caller's role is below what the request needs.
    Forbidden = "forbidden",
    /// 500: the server failed on its side; its log says why.
    Internal = "internal",
    /// 422: the arguments do not match what the device announced for the command.
    InvalidArguments = "invalid_arguments",
    /// 400: a long poll's `after` is beyond the session's events.
    InvalidCursor = "invalid_cursor",
    /// 422: a value that parses but is out of bounds or malformed (a limit, a name, a
    /// password, an id, an empty artifact).
    InvalidInput = "invalid_input",
    /// 422: a job's settings are out of bounds, or no device matches its targets.
    InvalidJob = "invalid_job",
    /// 422: `max_points` is outside 1 – 2 000.
    InvalidMaxPoints = "invalid_max_points",
    /// Live `refused` event only: a fleet query that does not parse or is out of
    /// bounds.
    InvalidQuery = "invalid_query",
    /// 422: `from` is not before `to`.
    InvalidRange = "invalid_range",
    /// 400: a live request that is not one (not JSON, no known `type`, a malformed id);
    /// also a live `refused` event.
    InvalidRequest = "invalid_request",
    /// 400: a live session id that is not 32 lowercase hex digits.
    InvalidSession = "invalid_session",
    /// 422: a command timeout outside 100 ms – 5 min.
    InvalidTimeout = "invalid_timeout",
    /// 403: a download link whose token is not valid for that artifact and device.
    InvalidToken = "invalid_token",
    /// 405: a known API path asked with a method it does not take.
    MethodNotAllowed = "method_not_allowed",
    /// 404: no such API endpoint, user, token or provisioned device; also a live
    /// `refused` event (a device or job the user may not see).
    NotFound = "not_found",
    /// 409: an admin cannot delete their own account.
    OwnAccount = "own_account",
    /// 409: an admin cannot lower their own role.
    OwnRole = "own_role",
    /// 503: the replica that sent the command did not answer a forwarded cancel in
    /// time; nothing changed, try again.
    ReplicaUnavailable = "replica_unavailable",
    /// 503: the server is shutting down; 410: a live session ended because of it.
    ServerStopping = "server_stopping",
    /// 410: the live session was closed.
    SessionClosed = "session_closed",
    /// 410: the live session expired (no poll came for too long).
    SessionExpired = "session_expired",
    /// 503: readings are not stored (`TETHER_DATABASE_URL=none`).
    StorageOff = "storage_off",
    /// 503: the database is unavailable; try again shortly. Also a live `refused`
    /// event.
    StoreUnavailable = "store_unavailable",
    /// 409: the live session's events go to its event stream; they cannot be polled.
    StreamedSession = "streamed_session",
    /// 403: a download link that has expired.
    TokenExpired = "token_expired",
    /// 413: a live request over 16 KiB.
    TooLarge = "too_large",
    /// Live `refused` event only: past 32 watched devices or 16 followed jobs.
    TooMany = "too_many",
    /// 429: too many requests wait in the live session.
    TooManyRequests = "too_many_requests",
    /// 429: the user holds too many live sessions; 503: the server does.
    TooManySessions = "too_many_sessions",
    /// 401: no session cookie nor API token, or a token that is unknown or revoked.
    Unauthenticated = "unauthenticated",
    /// 410 (and a live session's `end`): the user's session was revoked or expired.
    Unauthorized = "unauthorized",
    /// 404: no artifact of that id.
    UnknownArtifact = "unknown_artifact",
    /// 404: no such command (or one the caller may not see); 422: the device did not
    /// announce that command.
    UnknownCommand = "unknown_command",
    /// 404: no device of that id has connected, or the caller may not see it, or the id
    /// is not a valid id.
    UnknownDevice = "unknown_device",
    /// 404: no job of that id (or one the caller may not see).
    UnknownJob = "unknown_job",
    /// 404: the device announced no metric of that name.
    UnknownMetric = "unknown_metric",
    /// 404: no diagnostics report of that id for the device.
    UnknownReport = "unknown_report",
    /// 404: no live session of that id of the caller's.
    UnknownSession = "unknown_session",
    /// 415: a body of the wrong content type (a server function's or a live request's
    /// that is not `application/json`).
    UnsupportedMediaType = "unsupported_media_type",
}

impl ErrorCode {
    /// The code of this text, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|code| code.as_str() == text)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

    use super::{ErrorCode, Point, Series};
    use crate::CommandStatus;

    /// `ErrorCode` as a named schema: a string `enum` of every code, the description
    /// listing each with its statuses and meaning.
    impl utoipa::PartialSchema for ErrorCode {
        fn schema() -> RefOr<Schema> {
            let mut description = String::from(
                "A stable code for programs; the HTTP status is listed with each. A client \
                 MUST be ready for codes a newer server adds (treat one it does not know by \
                 its HTTP status).\n",
            );
            for code in ErrorCode::ALL {
                description.push_str(&format!("\n- `{}`: {}", code.as_str(), code.description()));
            }
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(ErrorCode::ALL.iter().map(|code| code.as_str())))
                .description(Some(description))
                .into()
        }
    }

    impl utoipa::ToSchema for ErrorCode {
        fn name() -> std::borrow::Cow<'static, str> {
            "ErrorCode".into()
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_is_written_as_serde_writes_it() {
        let mut seen = std::collections::BTreeSet::new();
        for &code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str()),
                "{code:?}"
            );
            let back: ErrorCode = serde_json::from_value(serde_json::json!(code.as_str())).unwrap();
            assert_eq!(back, code);
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!(
                !code.description().is_empty(),
                "{code:?} has no description"
            );
            assert!(seen.insert(code.as_str()), "{code:?} twice");
        }
        // Sorted as documented: alphabetically, so a new code has one place to go.
        let texts: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let mut sorted = texts.clone();
        sorted.sort_unstable();
        assert_eq!(texts, sorted);
    }

    #[test]
    fn an_error_keeps_its_wire_format_and_an_unknown_code_still_reads() {
        let error = ApiError::new(ErrorCode::DeviceOffline, "the device is offline");
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            serde_json::json!({"code": "device_offline", "message": "the device is offline"})
        );
        assert_eq!(error.error_code(), Some(ErrorCode::DeviceOffline));
        // A newer server's code: read, kept as it came, not known.
        let newer: ApiError =
            serde_json::from_str(r#"{"code":"quota_exceeded","message":"too many"}"#).unwrap();
        assert_eq!(newer.code, "quota_exceeded");
        assert_eq!(newer.error_code(), None);
    }
}
