//! What the hub counted: messages it dropped, by why, and what became of readings on
//! the live path. The recorders count what they store in
//! [`RecorderStats`](crate::RecorderStats).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::hub::Hub;

/// Counts of messages the hub dropped, by why, and of readings, by outcome.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bodies that were not a message of this protocol version.
    pub malformed: AtomicU64,
    /// Hellos that decoded but break the protocol's rules (`Hello::problems`): a
    /// device set up wrong, which stays offline.
    pub refused_hellos: AtomicU64,
    /// Well-formed messages on a queue where they do not belong.
    pub foreign: AtomicU64,
    /// Messages from a device session that a newer one replaced, or from an unknown device.
    pub stale: AtomicU64,
    /// Presence, replies and readings that speak for a device other than the account
    /// that published them (their `user_id`): one device posing as another; and
    /// messages for this replica alone (a forwarded cancel, its answer) that the
    /// servers' account did not send.
    pub impostors: AtomicU64,
    /// Messages about commands that had already ended, or that we never sent; answers
    /// to forwarded cancels that nobody waits for any more.
    pub late: AtomicU64,
    /// Commands that came back unroutable: the device's inbox was gone.
    pub returned: AtomicU64,
    /// Readings passed on to listeners.
    pub readings_accepted: AtomicU64,
    /// Readings of a metric the device did not announce.
    pub readings_unknown_metric: AtomicU64,
    /// Readings outside the announced range (or not finite).
    pub readings_out_of_range: AtomicU64,
    /// Readings beyond a device's rate limit.
    pub readings_flood: AtomicU64,
    /// Readings whose value is not a number.
    pub readings_wrong_type: AtomicU64,
    /// Readings stamped more than 5 minutes ahead of this server's clock, or before
    /// clocks were set.
    pub readings_bad_timestamp: AtomicU64,
}

/// A copy of [`Stats`] at one moment, with the gauges of the hub's state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct StatsSnapshot {
    pub malformed: u64,
    pub refused_hellos: u64,
    pub foreign: u64,
    pub stale: u64,
    pub impostors: u64,
    pub late: u64,
    pub returned: u64,
    pub readings_accepted: u64,
    pub readings_unknown_metric: u64,
    pub readings_out_of_range: u64,
    pub readings_flood: u64,
    pub readings_wrong_type: u64,
    pub readings_bad_timestamp: u64,
    /// Commands sent by this replica that have not ended.
    pub pending_commands: u64,
    /// Devices known to this replica, and how many of them are online.
    pub devices: u64,
    pub devices_online: u64,
    /// Devices this replica's viewers watch.
    pub watched_devices: u64,
    /// Whether the broker link is up.
    pub connected: bool,
    /// Batches of command changes written to the command log, and failed writes
    /// (retried).
    pub command_log_batches: u64,
    pub command_log_failures: u64,
}

impl Hub {
    pub fn stats(&self) -> StatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let stats = &self.inner.stats;
        let (pending_commands, devices, devices_online, watched_devices) = {
            let state = self.state();
            let (devices, online) = state.registry.counts();
            (
                state.commands.pending() as u64,
                devices as u64,
                online as u64,
                state.watched.len() as u64,
            )
        };
        StatsSnapshot {
            malformed: load(&stats.malformed),
            refused_hellos: load(&stats.refused_hellos),
            impostors: load(&stats.impostors),
            foreign: load(&stats.foreign),
            stale: load(&stats.stale),
            late: load(&stats.late),
            returned: load(&stats.returned),
            readings_accepted: load(&stats.readings_accepted),
            readings_unknown_metric: load(&stats.readings_unknown_metric),
            readings_out_of_range: load(&stats.readings_out_of_range),
            readings_flood: load(&stats.readings_flood),
            readings_wrong_type: load(&stats.readings_wrong_type),
            readings_bad_timestamp: load(&stats.readings_bad_timestamp),
            pending_commands,
            devices,
            devices_online,
            watched_devices,
            connected: self.is_connected(),
            command_log_batches: self.inner.log.as_ref().map_or(0, |l| load(&l.written)),
            command_log_failures: self.inner.log.as_ref().map_or(0, |l| load(&l.failures)),
        }
    }
}
