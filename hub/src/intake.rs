//! Intake: what devices and other replicas publish, as the hub's consumers deliver it.
//! Presence (hello, heartbeat, bye) updates the [`registry`](crate::registry); replies
//! move commands on; readings are checked against what their device announced and
//! rate-limited before they reach listeners; other replicas' command changes are
//! mirrored; what another replica sends this one directly (a forwarded cancel, an
//! answer) goes to [`forward`](crate::forward). Anything malformed, foreign or from an
//! old session is counted in [`Stats`](crate::Stats) and dropped: no message can stop
//! a consumer.
//!
//! Who sent a message is its `user_id`, which the broker guarantees is the account
//! that published it; a device's account is its id. Presence, replies and readings
//! that speak for another device than their sender are impostors, counted and
//! dropped before they touch any state: the default exchange lets any account put a
//! message into any queue whose name it knows, so the queue it came on proves nothing.

use std::{sync::atomic::Ordering, time::Instant};

use common::now_ms;
use lapin::message::Delivery;
use protocol::{
    DeviceMessage,
    api::{CommandView, Latest, LiveEvent, Reading, RefusedHello},
    names::{self, PresenceKind},
};

use crate::{
    commands::{self, Departure},
    flood::{Admission, MAX_READINGS_PER_SECOND},
    forward::{CANCEL_ANSWER_KIND, CANCEL_KIND},
    hub::{Hub, State},
    link::sender,
    reading::{self, Unreadable},
    send::{
        COMMANDS_KIND, OFFLINE_GRACE, REPLICA_GONE_KIND, REPLICA_KIND, ReplicaBatch, ReplicaEvent,
        SHARED_LIVE_KIND, SharedLive,
    },
};

impl Hub {
    pub(crate) fn on_presence(&self, delivery: &Delivery) {
        let message = match protocol::decode::<DeviceMessage>(&delivery.data) {
            Ok(message) => message,
            Err(error) => {
                return self.dropped(
                    &self.inner.stats.malformed,
                    &format!("presence message: {error}"),
                );
            }
        };
        let routed = names::parse_presence_key(delivery.routing_key.as_str());
        if let Some((device, _)) = &routed
            && sender(delivery) != Some(device.as_str())
        {
            return self.impostor(delivery, device);
        }
        let (now, now_ms) = (Instant::now(), now_ms());
        let mut state = self.state();
        if let Some((device, _)) = &routed
            && state.revoked.contains(device)
        {
            self.inner.stats.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut events = Vec::new();
        // A watched device that (re)connected gets its lease on the new inbox at once.
        let mut rewatch = None;
        match (message, routed) {
            (DeviceMessage::Hello(mut hello), Some((device, PresenceKind::Hello)))
                if device == hello.device_id =>
            {
                if let Some(problem) = crate::registry::hello_problem(&hello) {
                    self.dropped(
                        &self.inner.stats.refused_hellos,
                        &format!("a hello from {device}: {problem}"),
                    );
                    // Kept where people look: the device's view, and for a device never
                    // seen, the API's answer about it.
                    let refused = RefusedHello {
                        at_ms: now_ms,
                        problem,
                    };
                    if state.refused_hellos.len() >= crate::hub::REFUSED_HELLOS
                        && !state.refused_hellos.contains_key(&device)
                    {
                        state.refused_hellos.clear();
                    }
                    state.refused_hellos.insert(device.clone(), refused.clone());
                    if let Some(view) = state.registry.hello_refused(&device, refused) {
                        self.broadcast(&[LiveEvent::DeviceUpdated { device: view }]);
                    }
                    return;
                }
                state.refused_hellos.remove(&device);
                hello.cut_text();
                let (view, replaced) = state.registry.hello(hello, now, now_ms);
                if state.watched.contains_key(&device) {
                    rewatch = Some(device.clone());
                }
                if let Some(old) = replaced {
                    let why =
                        "the device reconnected with a new session; the old one cannot answer";
                    if state.commands.device_gone(
                        &device,
                        &old,
                        why,
                        Departure::Lost,
                        now + OFFLINE_GRACE,
                    ) > 0
                    {
                        self.inner.timer.notify_one();
                    }
                }
                events.push(LiveEvent::DeviceUpdated { device: view });
            }
            (DeviceMessage::Heartbeat(beat), Some((device, PresenceKind::Heartbeat)))
                if device == beat.device_id =>
            {
                match state.registry.heartbeat(&beat, now, now_ms) {
                    Ok(back) => {
                        events.extend(back.map(|device| LiveEvent::DeviceUpdated { device }))
                    }
                    Err(_) => {
                        self.inner.stats.stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (DeviceMessage::Bye(mut bye), Some((device, PresenceKind::Bye)))
                if device == bye.device_id =>
            {
                protocol::capability::cut(&mut bye.reason, protocol::device::MAX_BYE_REASON);
                match state.registry.bye(&bye, now_ms) {
                    Ok(gone) => {
                        events.extend(gone.map(|device| LiveEvent::DeviceUpdated { device }));
                        let why = if bye.reason.is_empty() {
                            "the device went offline".to_owned()
                        } else {
                            format!("the device went offline ({})", bye.reason)
                        };
                        if state.commands.device_gone(
                            &device,
                            &bye.session_id,
                            &why,
                            Departure::Bye,
                            now + OFFLINE_GRACE,
                        ) > 0
                        {
                            self.inner.timer.notify_one();
                        }
                    }
                    Err(_) => {
                        self.inner.stats.stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (message, _) => {
                drop(state);
                return self.dropped(
                    &self.inner.stats.foreign,
                    &format!("{message:?} under routing key {}", delivery.routing_key),
                );
            }
        }
        self.broadcast(&events);
        drop(state);
        if let Some(device) = rewatch {
            self.tell_watch(&device);
        }
    }

    pub(crate) fn on_reply(&self, delivery: &Delivery) -> Vec<CommandView> {
        let message = match protocol::decode::<DeviceMessage>(&delivery.data) {
            Ok(message) => message,
            Err(error) => {
                self.dropped(&self.inner.stats.malformed, &format!("reply: {error}"));
                return Vec::new();
            }
        };
        let mut state = self.state();
        if let Some(device) = message
            .answer_to()
            .and_then(|(id, _)| state.commands.device_of(id))
        {
            if sender(delivery) != Some(device.as_str()) {
                let device = device.clone();
                drop(state);
                self.impostor(delivery, &device);
                return Vec::new();
            }
            if state.revoked.contains(device) {
                self.inner.stats.stale.fetch_add(1, Ordering::Relaxed);
                return Vec::new();
            }
        }
        match state.commands.apply_device_message(&message, now_ms()) {
            Ok(view) => {
                self.broadcast_commands(&state, std::slice::from_ref(&view));
                vec![view]
            }
            Err(commands::Ignored::NotAboutACommand) => {
                drop(state);
                self.dropped(
                    &self.inner.stats.foreign,
                    "a non-command message on the reply queue",
                );
                Vec::new()
            }
            Err(commands::Ignored::StaleSession) => {
                drop(state);
                self.dropped(&self.inner.stats.stale, "a reply from an old session");
                Vec::new()
            }
            Err(why) => {
                drop(state);
                self.dropped(
                    &self.inner.stats.late,
                    &format!("a reply about an ended or unknown command ({why:?})"),
                );
                Vec::new()
            }
        }
    }

    /// A reading: checked against what its device announced, rate-limited per device,
    /// then passed to listeners. Anything else is counted and dropped.
    pub(crate) fn on_telemetry(&self, delivery: &Delivery) {
        let stats = &self.inner.stats;
        let sample = match reading::decode(&delivery.data, delivery.routing_key.as_str()) {
            Ok(sample) => sample,
            Err(Unreadable::Malformed(why)) => return self.dropped(&stats.malformed, &why),
            Err(Unreadable::WrongType(why)) => {
                return self.dropped(&stats.readings_wrong_type, &why);
            }
            Err(Unreadable::Foreign(why)) => return self.dropped(&stats.foreign, &why),
        };
        if sender(delivery) != Some(sample.device_id.as_str()) {
            return self.impostor(delivery, &sample.device_id);
        }
        if !reading::plausible_time(sample.ts_ms, now_ms()) {
            return self.dropped(
                &stats.readings_bad_timestamp,
                &format!(
                    "a reading of {} stamped {} ms, more than 5 minutes ahead of this server's clock or before clocks were set",
                    sample.device_id, sample.ts_ms
                ),
            );
        }
        let mut state = self.state();
        let State {
            registry,
            flood,
            revoked,
            ..
        } = &mut *state;
        let Some(device) = registry
            .get_mut(&sample.device_id)
            .filter(|d| d.session_id == sample.session_id)
            .filter(|_| !revoked.contains(&sample.device_id))
        else {
            // Counted, not logged: every reading of a device in this state would log,
            // as heartbeats from old sessions are not logged either.
            stats.stale.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(spec) = device
            .view
            .capabilities
            .metrics
            .iter()
            .find(|m| m.name == sample.metric)
        else {
            drop(state);
            return self.dropped(
                &stats.readings_unknown_metric,
                &format!("a reading of unannounced metric {:?}", sample.metric),
            );
        };
        if !spec.admits(sample.value) {
            drop(state);
            return self.dropped(
                &stats.readings_out_of_range,
                &format!(
                    "{} = {} is outside its announced range",
                    sample.metric, sample.value
                ),
            );
        }
        let arrived_ms = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        if let Admission::Refused { first } = flood.admit(&sample.device_id, arrived_ms) {
            stats.readings_flood.fetch_add(1, Ordering::Relaxed);
            if first {
                tracing::warn!(device = %sample.device_id, "dropping readings beyond {MAX_READINGS_PER_SECOND}/s");
            }
            return;
        }
        stats.readings_accepted.fetch_add(1, Ordering::Relaxed);
        let latest = Latest {
            value: sample.value,
            ts_ms: sample.ts_ms,
        };
        device
            .view
            .latest
            .entry(sample.metric.clone())
            .and_modify(|known| {
                if latest.ts_ms >= known.ts_ms {
                    *known = latest;
                }
            })
            .or_insert(latest);
        let reading = Reading {
            device_id: sample.device_id,
            metric: sample.metric,
            value: sample.value,
            ts_ms: sample.ts_ms,
        };
        self.broadcast(&[LiveEvent::Telemetry { reading }]);
    }

    /// Counts and logs a message that speaks for `device` but was not sent by it.
    fn impostor(&self, delivery: &Delivery, device: &protocol::DeviceId) {
        let from = sender(delivery).unwrap_or("(no user_id)");
        self.dropped(
            &self.inner.stats.impostors,
            &format!("a message for device {device} sent by account {from:?}"),
        );
    }

    pub(crate) fn on_replica_event(&self, delivery: &Delivery) {
        let own = delivery.properties.app_id().as_ref().map(|id| id.as_str());
        if own == Some(self.inner.replica_id.as_str()) {
            return;
        }
        let kind = delivery
            .properties
            .kind()
            .as_ref()
            .map(|kind| kind.as_str());
        if let Some(kind @ (CANCEL_KIND | CANCEL_ANSWER_KIND)) = kind {
            // Sent to this replica alone, not over the exchange.
            return self.on_direct(delivery, kind);
        }
        let origin = own.unwrap_or_default();
        if kind == Some(REPLICA_GONE_KIND) {
            self.gone(origin);
            return;
        }
        // Where it takes requests, believed only from the servers' own account.
        let queue = delivery
            .properties
            .reply_to()
            .as_ref()
            .filter(|_| {
                self.link()
                    .is_some_and(|link| sender(delivery) == Some(link.user.as_str()))
            })
            .map(|queue| queue.to_string());
        // Another replica is there (whatever it says): share command changes with it,
        // and if it is new, tell it at once that this one is here too.
        if self.heard_from(origin, queue) {
            let hub = self.clone();
            self.inner
                .shutdown
                .spawn(async move { hub.announce().await });
        }
        let commands = match kind {
            Some(REPLICA_KIND) => return,
            Some(SHARED_LIVE_KIND) => return self.on_shared_live(delivery),
            Some(COMMANDS_KIND) => protocol::decode::<ReplicaBatch>(&delivery.data)
                .map(|batch| (batch.origin, batch.commands)),
            _ => protocol::decode::<ReplicaEvent>(&delivery.data)
                .map(|event| (event.origin, vec![event.command])),
        };
        let (origin, commands) = match commands {
            Ok(shared) => shared,
            Err(error) => {
                return self.dropped(
                    &self.inner.stats.malformed,
                    &format!("replica event: {error}"),
                );
            }
        };
        if origin == self.inner.replica_id {
            return;
        }
        let mut state = self.state();
        let mirrored: Vec<CommandView> = commands
            .into_iter()
            .filter_map(|command| state.commands.mirror(command, &origin))
            .collect();
        self.broadcast_commands(&state, &mirrored);
    }

    /// Another replica's job progress, for this replica's browsers: only job events are
    /// taken (the others each replica makes itself).
    fn on_shared_live(&self, delivery: &Delivery) {
        let shared = match protocol::decode::<SharedLive>(&delivery.data) {
            Ok(shared) => shared,
            Err(error) => {
                return self.dropped(
                    &self.inner.stats.malformed,
                    &format!("shared live event: {error}"),
                );
            }
        };
        if shared.origin == self.inner.replica_id {
            return;
        }
        match shared.event {
            event @ (LiveEvent::JobUpdated { .. } | LiveEvent::JobTarget { .. }) => {
                self.emit_unnumbered(event);
            }
            _ => self.dropped(
                &self.inner.stats.malformed,
                "a shared live event that is not a job's",
            ),
        }
    }
}
