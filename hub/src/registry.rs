//! The devices this replica knows, from their presence messages. Pure state: the hub
//! feeds it messages and the clock, and publishes what changed.

use std::{
    collections::HashMap,
    hash::{Hash as _, Hasher as _},
    sync::Arc,
    time::{Duration, Instant},
};

use protocol::{
    Bye, Capabilities, DeviceId, Heartbeat, Hello,
    api::{DeviceView, RefusedHello},
};

/// Heartbeats a device may miss before it is declared offline.
pub const MISSED_HEARTBEATS: u32 = 3;

/// Why a hello cannot be taken, if it cannot (every rule is [`Hello::problems`]): its
/// first few problems as one line for the log, cut to a readable length.
pub fn hello_problem(hello: &Hello) -> Option<String> {
    const SHOWN: usize = 3;
    let problems = hello.problems();
    if problems.is_empty() {
        return None;
    }
    let mut text = problems[..problems.len().min(SHOWN)].join("; ");
    if problems.len() > SHOWN {
        text.push_str(&format!(" (and {} more)", problems.len() - SHOWN));
    }
    protocol::capability::cut(&mut text, 1_000);
    // A device's text goes to the log and to people: no line breaks or escapes of its own.
    Some(
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
    )
}

/// A device and where its current session can be reached.
#[derive(Debug, Clone)]
pub struct Device {
    pub view: DeviceView,
    pub session_id: String,
    pub inbox: String,
    /// When anything was last heard from this session, for heartbeat expiry.
    last_heard: Instant,
}

/// Why a presence message changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// From a device this replica has never seen say hello.
    UnknownDevice,
    /// From a session that a newer hello replaced.
    StaleSession,
}

#[derive(Debug, Default)]
pub struct Registry {
    devices: HashMap<DeviceId, Device>,
    capabilities: SharedCapabilities,
}

/// One copy of each set of capabilities devices announced: a fleet of one kind announces
/// the same commands and metrics thousands of times, and each device's view holds an
/// `Arc` of the one copy. Found by a hash of their names, then compared whole.
#[derive(Debug, Default)]
struct SharedCapabilities {
    by_names: HashMap<u64, Vec<Arc<Capabilities>>>,
    /// Copies held, and how many there may be before those no device holds any more
    /// are dropped.
    held: usize,
    sweep_at: usize,
}

impl SharedCapabilities {
    /// Copies held before the first sweep (then twice those still used, at least this).
    const FIRST_SWEEP: usize = 64;

    fn share(&mut self, capabilities: Capabilities) -> Arc<Capabilities> {
        let key = Self::names_hash(&capabilities);
        if let Some(same) = self
            .by_names
            .get(&key)
            .and_then(|copies| copies.iter().find(|copy| ***copy == capabilities))
        {
            return same.clone();
        }
        if self.held >= self.sweep_at.max(Self::FIRST_SWEEP) {
            self.sweep();
        }
        let shared = Arc::new(capabilities);
        self.by_names.entry(key).or_default().push(shared.clone());
        self.held += 1;
        shared
    }

    /// Drops the copies only this table holds.
    fn sweep(&mut self) {
        self.by_names.retain(|_, copies| {
            copies.retain(|copy| Arc::strong_count(copy) > 1);
            !copies.is_empty()
        });
        self.held = self.by_names.values().map(Vec::len).sum();
        self.sweep_at = self.held * 2;
    }

    fn names_hash(capabilities: &Capabilities) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for command in &capabilities.commands {
            command.name.hash(&mut hasher);
            command.args.len().hash(&mut hasher);
        }
        0xff_u8.hash(&mut hasher);
        for metric in &capabilities.metrics {
            metric.name.hash(&mut hasher);
        }
        hasher.finish()
    }
}

impl Registry {
    /// A device says hello: it is online with this session and inbox, whatever it was
    /// before. Returns its view and the session it replaced, if any (whose commands can
    /// no longer be answered).
    pub fn hello(
        &mut self,
        hello: Hello,
        now: Instant,
        now_ms: u64,
    ) -> (DeviceView, Option<String>) {
        let previous = self.devices.get(&hello.device_id);
        let was_online = previous.is_some_and(|d| d.view.online);
        let replaced = previous
            .map(|d| d.session_id.clone())
            .filter(|s| *s != hello.session_id);
        let since_ms = match previous {
            Some(d) if was_online && replaced.is_none() => d.view.since_ms,
            _ => now_ms,
        };
        let view = DeviceView {
            id: hello.device_id.clone(),
            kind: hello.kind,
            firmware: hello.firmware,
            online: true,
            since_ms,
            last_seen_ms: now_ms,
            heartbeat_ms: hello.heartbeat_ms,
            // Kept across sessions: the last value known is still worth showing.
            latest: previous.map(|d| d.view.latest.clone()).unwrap_or_default(),
            capabilities: self.capabilities.share(hello.capabilities),
            // A hello taken: what it announced is in effect.
            hello_refused: None,
        };
        let device = Device {
            view: view.clone(),
            session_id: hello.session_id,
            inbox: hello.inbox,
            last_heard: now,
        };
        self.devices.insert(hello.device_id, device);
        (view, replaced)
    }

    /// A heartbeat from the current session. Returns the view if the device had been
    /// declared offline (its heartbeats were late) and is now back.
    pub fn heartbeat(
        &mut self,
        beat: &Heartbeat,
        now: Instant,
        now_ms: u64,
    ) -> Result<Option<DeviceView>, Ignored> {
        let device = self.current(&beat.device_id, &beat.session_id)?;
        device.last_heard = now;
        device.view.last_seen_ms = now_ms;
        if device.view.online {
            return Ok(None);
        }
        device.view.online = true;
        device.view.since_ms = now_ms;
        Ok(Some(device.view.clone()))
    }

    /// The current session says goodbye: offline now.
    pub fn bye(&mut self, bye: &Bye, now_ms: u64) -> Result<Option<DeviceView>, Ignored> {
        let device = self.current(&bye.device_id, &bye.session_id)?;
        device.view.last_seen_ms = now_ms;
        Ok(Self::go_offline(device, now_ms))
    }

    /// A message to this session's inbox came back unroutable: the inbox is gone.
    pub fn unroutable(
        &mut self,
        id: &DeviceId,
        session_id: &str,
        now_ms: u64,
    ) -> Option<DeviceView> {
        let device = self.current(id, session_id).ok()?;
        Self::go_offline(device, now_ms)
    }

    /// Declares offline every device whose heartbeats stopped; returns them with the
    /// session that went silent.
    pub fn expire(&mut self, now: Instant, now_ms: u64) -> Vec<(DeviceView, String)> {
        self.devices
            .values_mut()
            .filter(|d| {
                d.view.online && now.duration_since(d.last_heard) > Self::silence_allowed(d)
            })
            .filter_map(|d| Self::go_offline(d, now_ms).map(|view| (view, d.session_id.clone())))
            .collect()
    }

    /// The hub itself stood still for `stall` (its timer woke that late: the process
    /// was starved of CPU), so it read no heartbeats meanwhile: that time is not held
    /// against any device, or a whole fleet would be declared offline at once for the
    /// server's own delay.
    pub fn forgive(&mut self, stall: Duration, now: Instant) {
        for device in self.devices.values_mut().filter(|d| d.view.online) {
            device.last_heard = (device.last_heard + stall).min(now);
        }
    }

    /// Notes on a known device that its last hello was dropped; its view, changed.
    pub fn hello_refused(&mut self, id: &DeviceId, refused: RefusedHello) -> Option<DeviceView> {
        let device = self.devices.get_mut(id)?;
        device.view.hello_refused = Some(refused);
        Some(device.view.clone())
    }

    pub fn get(&self, id: &DeviceId) -> Option<&Device> {
        self.devices.get(id)
    }

    pub fn get_mut(&mut self, id: &DeviceId) -> Option<&mut Device> {
        self.devices.get_mut(id)
    }

    /// How many devices are known, and how many of them are online.
    pub fn counts(&self) -> (usize, usize) {
        let online = self.devices.values().filter(|d| d.view.online).count();
        (self.devices.len(), online)
    }

    /// Every device, in no order.
    pub fn iter_views(&self) -> impl Iterator<Item = &DeviceView> {
        self.devices.values().map(|d| &d.view)
    }

    /// Every device, sorted by id.
    pub fn views(&self) -> Vec<DeviceView> {
        let mut views: Vec<_> = self.devices.values().map(|d| d.view.clone()).collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    fn current(&mut self, id: &DeviceId, session_id: &str) -> Result<&mut Device, Ignored> {
        let device = self.devices.get_mut(id).ok_or(Ignored::UnknownDevice)?;
        if device.session_id == session_id {
            Ok(device)
        } else {
            Err(Ignored::StaleSession)
        }
    }

    fn go_offline(device: &mut Device, now_ms: u64) -> Option<DeviceView> {
        if !device.view.online {
            return None;
        }
        device.view.online = false;
        device.view.since_ms = now_ms;
        Some(device.view.clone())
    }

    fn silence_allowed(device: &Device) -> Duration {
        Duration::from_millis(
            device
                .view
                .heartbeat_ms
                .saturating_mul(u64::from(MISSED_HEARTBEATS)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: &str, session: &str) -> Hello {
        Hello {
            device_id: DeviceId::new(id).unwrap(),
            session_id: session.into(),
            inbox: format!("inbox-{session}"),
            kind: "switch".into(),
            firmware: "1.0".into(),
            heartbeat_ms: 1000,
            capabilities: Default::default(),
        }
    }

    fn beat(id: &str, session: &str) -> Heartbeat {
        Heartbeat {
            device_id: DeviceId::new(id).unwrap(),
            session_id: session.into(),
        }
    }

    #[test]
    fn a_hello_needs_an_inbox_and_a_heartbeat_of_100_ms_to_10_minutes() {
        let with = |heartbeat_ms, inbox: &str| Hello {
            heartbeat_ms,
            inbox: inbox.into(),
            ..hello("d", "s")
        };
        for fine in [100, 5_000, 600_000] {
            assert_eq!(hello_problem(&with(fine, "q")), None, "{fine}");
        }
        for wrong in [0, 99, 600_001, u64::MAX] {
            assert!(hello_problem(&with(wrong, "q")).is_some(), "{wrong}");
        }
        assert!(hello_problem(&with(1000, "")).is_some());
    }

    #[test]
    fn a_hello_problem_names_the_first_three_of_many() {
        let metrics = (0..5)
            .map(|i| protocol::MetricSpec {
                name: format!("bad.{i}"),
                unit: String::new(),
                min: None,
                max: None,
            })
            .collect();
        let mut bad = hello("d", "s");
        bad.capabilities.metrics = metrics;
        let problem = hello_problem(&bad).unwrap();
        assert!(
            problem.starts_with("metric name \"bad.0\" must be"),
            "{problem}"
        );
        assert!(problem.ends_with("(and 2 more)"), "{problem}");
    }

    #[test]
    fn a_hello_problem_holds_no_control_characters() {
        let mut bad = hello("d", "s");
        bad.capabilities.commands = vec![
            serde_json::from_value(serde_json::json!({"name": "go", "args": [
                {"name": "x\nFAKE LOG LINE\u{1b}[31m", "type": "integer", "max": 1, "default": 2}
            ]}))
            .unwrap(),
        ];
        let problem = hello_problem(&bad).unwrap();
        assert!(problem.contains("FAKE LOG LINE"), "{problem}");
        assert!(!problem.chars().any(char::is_control), "{problem:?}");
    }

    #[test]
    fn hello_heartbeat_and_bye() {
        let t0 = Instant::now();
        let mut registry = Registry::default();
        let (view, replaced) = registry.hello(hello("d", "s1"), t0, 1_000);
        assert!(view.online);
        assert_eq!((view.since_ms, replaced), (1_000, None));

        assert_eq!(registry.heartbeat(&beat("d", "s1"), t0, 2_000), Ok(None));
        assert_eq!(registry.get(&view.id).unwrap().view.last_seen_ms, 2_000);

        let bye = Bye {
            device_id: view.id.clone(),
            session_id: "s1".into(),
            reason: String::new(),
        };
        let offline = registry.bye(&bye, 3_000).unwrap().unwrap();
        assert!(!offline.online);
        assert_eq!(offline.since_ms, 3_000);
        assert_eq!(registry.bye(&bye, 3_500), Ok(None), "already offline");
    }

    #[test]
    fn a_new_session_replaces_the_old_one_and_old_messages_are_ignored() {
        let t0 = Instant::now();
        let mut registry = Registry::default();
        registry.hello(hello("d", "s1"), t0, 1_000);
        let (view, replaced) = registry.hello(hello("d", "s2"), t0, 2_000);
        assert_eq!(replaced.as_deref(), Some("s1"));
        assert_eq!(view.since_ms, 2_000, "a new session is a new online period");
        assert_eq!(registry.get(&view.id).unwrap().inbox, "inbox-s2");
        assert_eq!(
            registry.heartbeat(&beat("d", "s1"), t0, 3_000),
            Err(Ignored::StaleSession)
        );
        assert_eq!(
            registry.heartbeat(&beat("x", "s1"), t0, 3_000),
            Err(Ignored::UnknownDevice)
        );
        assert_eq!(registry.unroutable(&view.id, "s1", 3_000), None);
        assert!(registry.unroutable(&view.id, "s2", 3_000).is_some());
    }

    #[test]
    fn time_the_hub_stood_still_is_not_held_against_devices() {
        let t0 = Instant::now();
        let mut registry = Registry::default();
        registry.hello(hello("patient", "s1"), t0, 0);
        // 3 heartbeats of 1 s are allowed; the hub was starved for 2 s of them.
        let t1 = t0 + Duration::from_millis(3_500);
        registry.forgive(Duration::from_secs(2), t1);
        assert!(registry.expire(t1, 3_500).is_empty(), "2 s were the hub's");
        let t2 = t0 + Duration::from_millis(5_100);
        assert_eq!(registry.expire(t2, 5_100).len(), 1, "silent beyond that");
        // Never beyond now: a long stall does not buy a device time in advance.
        registry.hello(hello("patient", "s2"), t2, 5_100);
        registry.forgive(Duration::from_secs(60), t2);
        assert_eq!(
            registry
                .expire(t2 + Duration::from_millis(3_100), 8_200)
                .len(),
            1
        );
    }

    #[test]
    fn silent_devices_expire_after_missed_heartbeats_and_can_come_back() {
        let t0 = Instant::now();
        let mut registry = Registry::default();
        registry.hello(hello("quiet", "s1"), t0, 0);
        registry.hello(hello("chatty", "s2"), t0, 0);
        let t1 = t0 + Duration::from_millis(2_500);
        registry
            .heartbeat(&beat("chatty", "s2"), t1, 2_500)
            .unwrap();
        assert!(
            registry.expire(t1, 2_500).is_empty(),
            "3 heartbeats are allowed"
        );

        let t2 = t0 + Duration::from_millis(3_100);
        let expired = registry.expire(t2, 3_100);
        assert_eq!(expired.len(), 1);
        assert_eq!(
            (expired[0].0.id.as_str(), expired[0].1.as_str()),
            ("quiet", "s1")
        );
        assert!(registry.expire(t2, 3_100).is_empty(), "expires once");

        let back = registry
            .heartbeat(&beat("quiet", "s1"), t2, 3_200)
            .unwrap()
            .unwrap();
        assert!(back.online);
        assert_eq!(back.since_ms, 3_200);
    }

    #[test]
    fn views_are_sorted() {
        let t0 = Instant::now();
        let mut registry = Registry::default();
        for id in ["c", "a", "b"] {
            registry.hello(hello(id, id), t0, 0);
        }
        let ids: Vec<_> = registry
            .views()
            .into_iter()
            .map(|v| v.id.to_string())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn devices_that_announce_the_same_share_one_copy_and_unused_copies_go() {
        let gateway = |metric: &str| -> Capabilities {
            serde_json::from_value(serde_json::json!({
                "commands": [{"name": "echo", "args": [{"name": "text", "type": "string"}]}],
                "metrics": [{"name": metric, "unit": "%", "min": 0.0, "max": 100.0}]
            }))
            .unwrap()
        };
        let mut registry = Registry::default();
        let now = Instant::now();
        let mut views = Vec::new();
        for n in 0..3 {
            let mut hello = hello(&format!("gw-{n}"), &format!("s{n}"));
            hello.capabilities = gateway("cpu");
            views.push(registry.hello(hello, now, 0).0);
        }
        assert!(Arc::ptr_eq(&views[0].capabilities, &views[2].capabilities));
        let mut other = hello("gw-other", "s-other");
        other.capabilities = gateway("signal");
        let other = registry.hello(other, now, 0).0;
        assert!(!Arc::ptr_eq(&views[0].capabilities, &other.capabilities));
        assert_eq!(other.capabilities.metrics[0].name, "signal");
        // Same names, another range: compared whole, not by the names alone.
        let mut ranged = hello("gw-ranged", "s-ranged");
        ranged.capabilities = gateway("cpu");
        ranged.capabilities.metrics[0].max = Some(50.0);
        let ranged = registry.hello(ranged, now, 0).0;
        assert_eq!(ranged.capabilities.metrics[0].max, Some(50.0));
        assert!(!Arc::ptr_eq(&views[0].capabilities, &ranged.capabilities));

        // Capabilities that change at every hello: copies nobody holds are dropped,
        // so the table stays the size of what devices announce now.
        drop((views, other, ranged));
        for round in 0..1_000 {
            let mut hello = hello("gw-changing", &format!("r{round}"));
            hello.capabilities = gateway(&format!("metric{round}"));
            registry.hello(hello, now, 0);
        }
        assert!(
            registry.capabilities.held <= 2 * SharedCapabilities::FIRST_SWEEP + 8,
            "{} copies held",
            registry.capabilities.held
        );
    }
}
