//! Tether's device link: the only part of the server that speaks AMQP, with no HTTP.
//!
//! The [`Hub`] keeps the registry of devices from their presence messages, sends
//! commands to device inboxes as AMQP RPC and follows each one through its statuses,
//! and tells every listener what changed as [`LiveEvent`](protocol::api::LiveEvent)s.
//! A pending command is an entry in a map and a deadline in a sorted set, watched by
//! one timer task; no task or thread waits on it. The [`Recorder`]s store readings
//! from the shared storage queue; they learn what devices announced through the narrow
//! [`Announced`] trait, which the hub implements, and never see the hub itself.
//!
//! The map of the crate, one job per module:
//!
//! | module | job |
//! |---|---|
//! | `hub` | the [`Hub`] type, its configuration and state, start and stop, reads |
//! | `link` | the broker connection: connect, topology, consumers, reconnect, goodbye |
//! | `intake` | what devices and other replicas publish: presence, replies, readings |
//! | `send` | send, cancel, wait, share with replicas, a device going away; their errors |
//! | `forward` | a cancel of another replica's command, forwarded to its owner and answered; an orphan's ended |
//! | `watch` | watch leases on a device's fast reporting pace |
//! | `timer` | deadlines, heartbeat expiry, lease renewal |
//! | `stats` | what the hub counted |
//! | `registry`, `commands`, `flood` | pure state: devices, command lifecycles, rate limit |
//! | `pages` | fleet pages computed once per change of the devices, shared by the tabs that show them |
//! | `reading` | a reading decoded once for both paths (live view and recorders) |
//! | `announced` | the narrow "what did this device announce" view |
//! | `store_queue` | the durable storage queue and its caps; `QueueType` (classic or quorum) |
//! | `recorder` | the recorders: batch, check, write, ack after commit |
//! | `command_log` | commands written to the database in batches; resumed on start; vanished replicas' ended |

mod announced;
mod command_log;
mod commands;
mod flood;
mod forward;
mod hub;
mod intake;
mod link;
mod pages;
mod reading;
mod recorder;
mod registry;
mod send;
mod stats;
mod store_queue;
mod timer;
mod watch;

pub use self::{
    announced::{Announced, Known},
    command_log::{CommandLog, ORPHAN_GRACE, ORPHANED},
    flood::MAX_READINGS_PER_SECOND,
    hub::{Event, Events, Hub, HubConfig, SharedEvent, Subscription},
    pages::SharedPage,
    recorder::{Recorder, RecorderConfig, RecorderSnapshot, RecorderStats, Rejected, Stop},
    send::{CancelError, SendError},
    stats::{Stats, StatsSnapshot},
    store_queue::{QUEUE_MAX_BYTES, QUEUE_MAX_LENGTH, QueueType, StoreQueue},
    watch::Watching,
};
