//! The one timer task: ends commands at their deadlines, marks devices whose heartbeats
//! stopped as offline, renews watch leases, and tells the other replicas this one is
//! here. Nothing else waits on time.

use std::time::{Duration, Instant};

use protocol::api::LiveEvent;

use crate::{commands::Departure, hub::Hub};

/// How often device heartbeats are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// How late the timer may wake before the hub counts itself as having stood still (a
/// starved process): later than this, the delay is not held against devices' heartbeats.
const STALL_AFTER: Duration = Duration::from_secs(1);

impl Hub {
    /// Times out commands at their deadlines and devices whose heartbeats stopped.
    pub(crate) async fn run_timer(&self) {
        let renew_every = self.inner.config.watch_lease / 3;
        let mut renewed = Instant::now();
        let mut announced = Instant::now();
        // When the next sweep is due, fixed until it is done: a wake-up for a new
        // deadline (every command sent notifies) must not put it off, or under a steady
        // load of commands heartbeats would never be checked again.
        let mut sweep = Instant::now() + SWEEP_INTERVAL;
        loop {
            let next_deadline = self.state().commands.next_deadline();
            let wake_at = next_deadline.map_or(sweep, |deadline| deadline.min(sweep));
            tokio::select! {
                () = tokio::time::sleep_until(wake_at.into()) => {}
                () = self.inner.timer.notified() => continue,
            }
            let (now, now_ms) = (Instant::now(), common::now_ms());
            if now >= sweep {
                sweep = now + SWEEP_INTERVAL;
            }
            let late = now.saturating_duration_since(wake_at);
            if late > STALL_AFTER {
                tracing::warn!(
                    "the hub stood still for {late:?} (starved of CPU?): not holding it against devices' heartbeats"
                );
                self.state().registry.forgive(late, now);
            }
            if now.duration_since(renewed) >= renew_every {
                renewed = now;
                self.renew_watches();
            }
            if now.duration_since(announced) >= crate::send::ANNOUNCE_EVERY {
                announced = now;
                self.announce().await;
            }
            let changed = {
                let mut state = self.state();
                for (device, session_id) in state.registry.expire(now, now_ms) {
                    // Silent for several heartbeats: no grace is needed.
                    let why = "the device stopped sending heartbeats";
                    state
                        .commands
                        .device_gone(&device.id, &session_id, why, Departure::Lost, now);
                    self.broadcast(&[LiveEvent::DeviceUpdated { device }]);
                }
                let changed = state.commands.expire(now, now_ms);
                self.broadcast_commands(&state, &changed);
                changed
            };
            self.share(&changed).await;
        }
    }
}
