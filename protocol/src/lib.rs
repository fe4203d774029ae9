//! The contract on the wire between devices, servers and browsers.
//!
//! Serde types and names only — no tokio, no lapin — so it compiles for wasm32 and the
//! browser shares the server's types. PROTOCOL.md at the repository root describes the
//! same contract for device authors in other languages.
//!
//! - [`names`]: exchanges, routing keys and the [`DeviceId`] that appears in them.
//! - [`codec`]: the JSON envelope every message travels in, with its version check.
//! - [`device`]: what devices send (hello, heartbeat, bye, delivered, progress, reply,
//!   telemetry) and what servers send them (command, cancel).
//! - [`capability`]: what a device announces it can do, and argument validation
//!   against it.
//! - [`api`]: device and command views, live events and API bodies for browsers.
//! - [`fleet`]: the fleet list's query (search, filters, sort, page), page and counts.
//! - [`auth`]: roles, and the views of users, API tokens and audit entries.
//! - [`command`]: a command's statuses and the state machine between them.
//! - [`policy`]: what each broker account (server or device) may do, for both brokers.
//! - [`backoff`]: the reconnect pacing every party shares (exponential, with jitter).
//! - `schema` (feature `schema`): the JSON Schemas of the device messages, as
//!   `contracts/` writes and checks them.

pub mod api;
pub mod artifact;
pub mod auth;
pub mod backoff;
pub mod capability;
pub mod codec;
pub mod command;
pub mod device;
pub mod fleet;
pub mod job;
pub mod names;
pub mod policy;
#[cfg(feature = "schema")]
pub mod schema;

pub use capability::{
    ArgKind, ArgSpec, ArgumentError, Capabilities, CommandSpec, MetricSpec, Reporting,
};
pub use codec::{DecodeError, PROTOCOL_VERSION, decode, encode};
pub use command::{CommandId, CommandStatus, TransitionError};
pub use device::{
    AnnounceRequest, Bye, CancelRequest, CommandRequest, Delivered, DeviceMessage, ErrorCode,
    Heartbeat, Hello, Outcome, Progress, Reply, ServerMessage, TelemetrySample, UnwatchRequest,
    WatchRequest,
};
pub use names::{DeviceId, InvalidDeviceId};
