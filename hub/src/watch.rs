//! Watch leases: while someone watches a device through this replica, the device
//! reports at the fast pace. The replica holds a renewable lease on that pace (`watch`
//! to the device's inbox, renewed by the [`timer`](crate::timer) every third of the
//! lease) until the last viewer leaves (`unwatch`); a lease lapses by itself if the
//! replica vanishes.

use protocol::{DeviceId, ServerMessage, UnwatchRequest, WatchRequest};

use crate::hub::Hub;

/// Held while someone watches a device through this replica: the device reports faster
/// until the last of these is dropped (see [`Hub::watch`]).
#[derive(Debug)]
pub struct Watching {
    hub: Hub,
    device: DeviceId,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let last = {
            let mut state = self.hub.state();
            match state.watched.get_mut(&self.device) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => state.watched.remove(&self.device).is_some(),
            }
        };
        if last {
            let unwatch = ServerMessage::Unwatch(UnwatchRequest {
                replica: self.hub.inner.replica_id.clone(),
            });
            self.hub.tell(&self.device, unwatch);
        }
    }
}

impl Hub {
    /// Someone watches `device`: while the returned guard lives, this replica holds a
    /// lease on the device's fast pace (renewed every third of the lease), so its
    /// readings come every `watch_interval` instead of every few seconds. Devices that
    /// announced no `reporting` are left alone.
    pub fn watch(&self, device: &DeviceId) -> Watching {
        let first = {
            let mut state = self.state();
            let count = state.watched.entry(device.clone()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            self.tell_watch(device);
        }
        Watching {
            hub: self.clone(),
            device: device.clone(),
        }
    }

    /// How many devices this replica's viewers watch.
    pub fn watched_devices(&self) -> usize {
        self.state().watched.len()
    }

    /// Renews the lease on every watched device.
    pub(crate) fn renew_watches(&self) {
        let watched: Vec<DeviceId> = self.state().watched.keys().cloned().collect();
        for device in &watched {
            self.tell_watch(device);
        }
    }

    /// Asks `device` for the fast pace, for one lease.
    pub(crate) fn tell_watch(&self, device: &DeviceId) {
        let config = &self.inner.config;
        let watch = ServerMessage::Watch(WatchRequest {
            replica: self.inner.replica_id.clone(),
            interval_ms: common::duration_ms(config.watch_interval),
            lease_ms: common::duration_ms(config.watch_lease),
        });
        self.tell(device, watch);
    }

    /// Sends `message` to an online device's inbox if it takes pace requests, without
    /// waiting: a lost one is made good by the next renewal, or by the lease lapsing.
    fn tell(&self, device: &DeviceId, message: ServerMessage) {
        let Some(link) = self.link() else { return };
        let inbox = self
            .state()
            .registry
            .get(device)
            .filter(|d| d.view.online && d.view.capabilities.reporting.is_some())
            .map(|d| d.inbox.clone());
        let Some(inbox) = inbox else { return };
        // A guard dropped while the runtime shuts down has nowhere to send from.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let properties = link.properties();
            let published = link.to_inbox(&inbox, &message, properties).await;
            if let Err(error) = published {
                tracing::debug!("cannot send a pace request: {error}");
            }
        });
    }
}
