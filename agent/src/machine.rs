//! The machine's own metrics: CPU, load, memory, swap, disks, uptime, temperatures and
//! network traffic of the Linux box the agent runs on, read from `/proc` and `/sys` (and
//! `statvfs` for disks) as an [`crate::Readings`].
//!
//! What is announced is decided once, in [`MachineMetrics::new`]: a source that cannot
//! be read then (a container without `/sys/class/thermal`, a configured mount that is not
//! mounted) is left out, never a panic. A read that fails later skips that value for that
//! round. One [`Readings::read`] is a handful of small file reads
//! and one `statvfs` per disk.
//!
//! Metric names are one word of the routing key `telemetry.<device>.<metric>`: they use
//! only ASCII letters, digits and `_` (the characters a [`protocol::DeviceId`] allows,
//! without `-`), at most 64 of them. Mount paths, interface names and thermal zone types
//! are folded into that alphabet: `/` is `root`, `/var/log` is `var_log`, `cpu-thermal`
//! is `cpu_thermal`. Names depend only on what is measured, not on the order things
//! were found in, so they are stable across restarts.
//!
//! | metric | unit | range | source |
//! |---|---|---|---|
//! | `cpu` | `%` | 0–100 | `/proc/stat`, busy share since the previous read |
//! | `load_1m`, `load_5m`, `load_15m` | | ≥ 0 | `/proc/loadavg` |
//! | `memory_used` | `%` | 0–100 | `/proc/meminfo`: (MemTotal − MemAvailable) / MemTotal |
//! | `memory_available` | `B` | ≥ 0 | `/proc/meminfo`: MemAvailable |
//! | `swap_used` | `%` | 0–100 | `/proc/meminfo`, only when there is swap |
//! | `disk_used_<mount>` | `%` | 0–100 | `statvfs`, as `df`: used / (used + available) |
//! | `disk_free_<mount>` | `B` | ≥ 0 | `statvfs`: space available to unprivileged users |
//! | `uptime` | `s` | ≥ 0 | `/proc/uptime` |
//! | `temp_<zone type>` | `°C` | −40–150 | `/sys/class/thermal/thermal_zone*/temp` |
//! | `net_rx_<interface>`, `net_tx_<interface>` | `B/s` | ≥ 0 | `/proc/net/dev`, since the previous read |
//!
//! Rates and the CPU share are differences between two samples. The first sample is
//! taken in [`MachineMetrics::new`], so the first read already reports them (over the
//! time since construction); a value whose interval is empty (no time or no CPU tick
//! passed) is skipped rather than reported as 0.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::Instant,
};

use protocol::MetricSpec;
use serde::Deserialize;

use crate::Readings;

/// The `[machine]` table of the agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MachineConfig {
    /// Whether to report the machine's metrics at all.
    pub enabled: bool,
    /// The mounted filesystems to report. Empty: every real filesystem in
    /// `/proc/self/mounts` (see [`is_real_mount`]), one per device.
    pub mounts: Vec<PathBuf>,
    /// The network interfaces to report. Empty: every interface in `/proc/net/dev` but
    /// `lo`, as found at start.
    pub interfaces: Vec<String>,
    /// Whether to report thermal zones' temperatures.
    pub temperature: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mounts: Vec::new(),
            interfaces: Vec::new(),
            temperature: true,
        }
    }
}

/// The machine's metrics, chosen at construction; see the [module](self) for the list.
#[derive(Debug)]
pub struct MachineMetrics {
    proc: PathBuf,
    specs: Vec<MetricSpec>,
    cpu: bool,
    load: bool,
    memory: bool,
    swap: bool,
    uptime: bool,
    disks: Vec<Disk>,
    zones: Vec<Zone>,
    interfaces: Vec<Interface>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct Disk {
    path: PathBuf,
    used: String,
    free: String,
}

#[derive(Debug)]
struct Zone {
    temp: PathBuf,
    name: String,
}

#[derive(Debug)]
struct Interface {
    name: String,
    rx: String,
    tx: String,
}

/// The previous samples that rates and the CPU share are measured from.
#[derive(Debug, Default)]
struct State {
    cpu: Option<CpuTimes>,
    net: Option<(Instant, HashMap<String, NetCounters>)>,
}

impl MachineMetrics {
    /// The metrics of this machine, from `/proc` and `/sys`.
    pub fn new(config: MachineConfig) -> Self {
        Self::with_roots(config, "/proc", "/sys")
    }

    /// The metrics read from another `/proc` and `/sys`: those of the host mounted into
    /// a container, say (disks are still measured where `statvfs` finds them).
    pub fn with_roots(
        config: MachineConfig,
        proc: impl Into<PathBuf>,
        sys: impl Into<PathBuf>,
    ) -> Self {
        let proc = proc.into();
        let sys = sys.into();
        let mut machine = Self {
            proc,
            specs: Vec::new(),
            cpu: false,
            load: false,
            memory: false,
            swap: false,
            uptime: false,
            disks: Vec::new(),
            zones: Vec::new(),
            interfaces: Vec::new(),
            state: Mutex::new(State::default()),
        };
        if !config.enabled {
            return machine;
        }
        let mut state = State::default();

        if let Some(times) = machine.read_proc("stat").as_deref().and_then(parse_stat) {
            machine.cpu = true;
            state.cpu = Some(times);
            machine.specs.push(spec("cpu", "%", Some(0.0), Some(100.0)));
        }
        if machine
            .read_proc("loadavg")
            .as_deref()
            .and_then(parse_loadavg)
            .is_some()
        {
            machine.load = true;
            for name in ["load_1m", "load_5m", "load_15m"] {
                machine.specs.push(spec(name, "", Some(0.0), None));
            }
        }
        if let Some(memory) = machine.read_proc("meminfo").as_deref().map(parse_meminfo) {
            if memory.used_percent().is_some() {
                machine.memory = true;
                machine
                    .specs
                    .push(spec("memory_used", "%", Some(0.0), Some(100.0)));
                machine
                    .specs
                    .push(spec("memory_available", "B", Some(0.0), None));
            }
            if memory.swap_used_percent().is_some() {
                machine.swap = true;
                machine
                    .specs
                    .push(spec("swap_used", "%", Some(0.0), Some(100.0)));
            }
        }

        machine.disks = machine.find_disks(&config.mounts);
        for disk in &machine.disks {
            machine
                .specs
                .push(spec(&disk.used, "%", Some(0.0), Some(100.0)));
            machine.specs.push(spec(&disk.free, "B", Some(0.0), None));
        }

        if machine
            .read_proc("uptime")
            .as_deref()
            .and_then(parse_uptime)
            .is_some()
        {
            machine.uptime = true;
            machine.specs.push(spec("uptime", "s", Some(0.0), None));
        }

        if config.temperature {
            machine.zones = find_zones(&sys.join("class/thermal"));
            for zone in &machine.zones {
                machine
                    .specs
                    .push(spec(&zone.name, "°C", Some(-40.0), Some(150.0)));
            }
        }

        if let Some(counters) = machine
            .read_proc("net/dev")
            .as_deref()
            .and_then(parse_net_dev)
        {
            let names: Vec<String> = if config.interfaces.is_empty() {
                counters
                    .iter()
                    .map(|(name, _)| name.clone())
                    .filter(|name| name != "lo")
                    .collect()
            } else {
                config
                    .interfaces
                    .iter()
                    .filter(|name| {
                        let present = counters.iter().any(|(found, _)| found == *name);
                        if !present {
                            tracing::warn!(
                                "machine metrics: no network interface {name:?}; left out"
                            );
                        }
                        present
                    })
                    .cloned()
                    .collect()
            };
            let raw: Vec<(String, String)> = names
                .iter()
                .map(|name| (name.clone(), name.clone()))
                .collect();
            for (name, word) in names.iter().zip(unique_words(&raw)) {
                let interface = Interface {
                    name: name.clone(),
                    rx: metric_name("net_rx", &word),
                    tx: metric_name("net_tx", &word),
                };
                machine
                    .specs
                    .push(spec(&interface.rx, "B/s", Some(0.0), None));
                machine
                    .specs
                    .push(spec(&interface.tx, "B/s", Some(0.0), None));
                machine.interfaces.push(interface);
            }
            state.net = Some((Instant::now(), counters.into_iter().collect()));
        }

        machine.state = Mutex::new(state);
        machine
    }

    fn read_proc(&self, file: &str) -> Option<String> {
        fs::read_to_string(self.proc.join(file)).ok()
    }

    /// The configured mounts that `statvfs` can measure, or every real one.
    fn find_disks(&self, configured: &[PathBuf]) -> Vec<Disk> {
        let paths: Vec<PathBuf> = if configured.is_empty() {
            let Some(mounts) = self.read_proc("self/mounts") else {
                return Vec::new();
            };
            let mut mounts: Vec<Mount> = parse_mounts(&mounts)
                .into_iter()
                .filter(is_real_mount)
                // A bind-mounted file (a container's /etc/hosts) is not a disk of its own.
                .filter(|mount| mount.path.is_dir())
                .collect();
            // One mount per device: the shortest path (/ rather than a bind mount of a
            // directory of it; the first of a btrfs filesystem's subvolumes).
            mounts.sort_by_key(|mount| mount.path.as_os_str().len());
            let mut devices = Vec::new();
            mounts.retain(|mount| {
                if !mount.device.starts_with('/') {
                    return true;
                }
                if devices.contains(&mount.device) {
                    return false;
                }
                devices.push(mount.device.clone());
                true
            });
            mounts.into_iter().map(|mount| mount.path).collect()
        } else {
            configured.to_vec()
        };
        let mut paths: Vec<PathBuf> = paths
            .into_iter()
            .filter(|path| match disk_usage(path) {
                Some(usage) if usage.size > 0 => true,
                _ => {
                    if !configured.is_empty() {
                        tracing::warn!(
                            "machine metrics: cannot measure the filesystem at {}; left out",
                            path.display()
                        );
                    }
                    false
                }
            })
            .collect();
        paths.sort();
        paths.dedup();
        let raw: Vec<(String, String)> = paths
            .iter()
            .map(|path| {
                let shown = path.to_string_lossy().into_owned();
                let word = if shown.trim_matches('/').is_empty() {
                    "root".to_owned()
                } else {
                    shown.clone()
                };
                (word, shown)
            })
            .collect();
        paths
            .into_iter()
            .zip(unique_words(&raw))
            .map(|(path, word)| Disk {
                path,
                used: metric_name("disk_used", &word),
                free: metric_name("disk_free", &word),
            })
            .collect()
    }
}

impl Readings for MachineMetrics {
    fn metrics(&self) -> Vec<MetricSpec> {
        self.specs.clone()
    }

    fn read(&self) -> Vec<(String, f64)> {
        let mut values: Vec<(String, f64)> = Vec::with_capacity(self.specs.len());
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);

        if self.cpu
            && let Some(now) = self.read_proc("stat").as_deref().and_then(parse_stat)
        {
            if let Some(busy) = state.cpu.and_then(|before| cpu_percent(before, now)) {
                values.push(("cpu".into(), busy));
            }
            state.cpu = Some(now);
        }
        if self.load
            && let Some(load) = self.read_proc("loadavg").as_deref().and_then(parse_loadavg)
        {
            for (name, value) in ["load_1m", "load_5m", "load_15m"].into_iter().zip(load) {
                values.push((name.into(), value));
            }
        }
        if (self.memory || self.swap)
            && let Some(memory) = self.read_proc("meminfo").as_deref().map(parse_meminfo)
        {
            if self.memory {
                if let Some(used) = memory.used_percent() {
                    values.push(("memory_used".into(), used));
                }
                if let Some(available) = memory.available() {
                    values.push(("memory_available".into(), available as f64));
                }
            }
            if self.swap
                && let Some(used) = memory.swap_used_percent()
            {
                values.push(("swap_used".into(), used));
            }
        }
        for disk in &self.disks {
            if let Some(usage) = disk_usage(&disk.path) {
                if let Some(used) = usage.used_percent() {
                    values.push((disk.used.clone(), used));
                }
                values.push((disk.free.clone(), usage.available as f64));
            }
        }
        if self.uptime
            && let Some(uptime) = self.read_proc("uptime").as_deref().and_then(parse_uptime)
        {
            values.push(("uptime".into(), uptime));
        }
        for zone in &self.zones {
            if let Some(celsius) = read_temperature(&zone.temp) {
                values.push((zone.name.clone(), celsius));
            }
        }
        if !self.interfaces.is_empty()
            && let Some(counters) = self.read_proc("net/dev").as_deref().and_then(parse_net_dev)
        {
            let now = Instant::now();
            let counters: HashMap<String, NetCounters> = counters.into_iter().collect();
            if let Some((then, before)) = &state.net {
                let seconds = now.duration_since(*then).as_secs_f64();
                for interface in &self.interfaces {
                    let (Some(before), Some(after)) =
                        (before.get(&interface.name), counters.get(&interface.name))
                    else {
                        continue;
                    };
                    if let Some(rate) = rate(before.rx_bytes, after.rx_bytes, seconds) {
                        values.push((interface.rx.clone(), rate));
                    }
                    if let Some(rate) = rate(before.tx_bytes, after.tx_bytes, seconds) {
                        values.push((interface.tx.clone(), rate));
                    }
                }
            }
            state.net = Some((now, counters));
        }
        drop(state);

        // Whatever a sensor says, only what was announced goes out.
        values.retain(|(name, value)| {
            self.specs
                .iter()
                .find(|spec| spec.name == *name)
                .is_some_and(|spec| spec.admits(*value))
        });
        values
    }
}

fn spec(name: &str, unit: &str, min: Option<f64>, max: Option<f64>) -> MetricSpec {
    MetricSpec {
        name: name.into(),
        unit: unit.into(),
        min,
        max,
    }
}

/// The longest metric name this module makes.
pub const MAX_NAME_LEN: usize = 64;

/// `raw` folded into one routing-key word: every run of characters other than ASCII
/// letters and digits becomes one `_`, without `_` at either end.
pub fn sanitize(raw: &str) -> String {
    let mut word = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else if !word.is_empty() && !word.ends_with('_') {
            word.push('_');
        }
    }
    while word.ends_with('_') {
        word.pop();
    }
    word
}

/// `<prefix>_<word>`, at most [`MAX_NAME_LEN`] characters: a longer one is cut and ends
/// in a hash of the whole, so that it stays unique and stable.
fn metric_name(prefix: &str, word: &str) -> String {
    let name = format!("{prefix}_{word}");
    if name.len() <= MAX_NAME_LEN {
        return name;
    }
    // ASCII only, so any byte index is a character boundary.
    format!(
        "{}_{:08x}",
        &name[..MAX_NAME_LEN - 9],
        fnv1a(name.as_bytes())
    )
}

/// For (raw name, what tells it apart) pairs, the sanitized names, made unique: when two
/// fold into the same word, every one after the first (in the order of what tells them
/// apart) gets `_` and a hash of what tells it apart.
fn unique_words(raw: &[(String, String)]) -> Vec<String> {
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.sort_by(|&a, &b| raw[a].1.cmp(&raw[b].1));
    let mut words = vec![String::new(); raw.len()];
    let mut taken: Vec<String> = Vec::new();
    for index in order {
        let (name, distinct) = &raw[index];
        let mut word = sanitize(name);
        if word.is_empty() {
            word = format!("{:08x}", fnv1a(distinct.as_bytes()));
        }
        if taken.contains(&word) {
            word = format!("{word}_{:08x}", fnv1a(distinct.as_bytes()));
        }
        taken.push(word.clone());
        words[index] = word;
    }
    words
}

/// 32-bit FNV-1a: a hash that, unlike std's, is the same in every build.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// CPU time since boot from the `cpu` line of `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// All the time the CPUs spent (guest time is already counted in user time).
    pub total: u64,
    /// Idle and waiting for I/O.
    pub idle: u64,
}

/// The aggregate `cpu` line of `/proc/stat`: `user nice system idle iowait irq softirq
/// steal guest guest_nice`, of which older kernels have fewer.
pub fn parse_stat(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if fields.len() < 4 {
        return None;
    }
    let total = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes { total, idle })
}

/// The busy share of CPU time between two samples, in percent; `None` when no time
/// passed. (Idle and I/O wait time can step back on some kernels: that counts as none.)
pub fn cpu_percent(before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return None;
    }
    let idle = after.idle.saturating_sub(before.idle).min(total);
    Some(((total - idle) as f64 / total as f64 * 100.0).clamp(0.0, 100.0))
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`.
pub fn parse_loadavg(loadavg: &str) -> Option<[f64; 3]> {
    let mut fields = loadavg.split_whitespace().map(str::parse::<f64>);
    let mut load = [0.0; 3];
    for value in &mut load {
        *value = fields.next()?.ok().filter(|v| v.is_finite() && *v >= 0.0)?;
    }
    Some(load)
}

/// Seconds since boot, the first field of `/proc/uptime`.
pub fn parse_uptime(uptime: &str) -> Option<f64> {
    uptime
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// What matters of `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meminfo {
    pub total: Option<u64>,
    pub free: Option<u64>,
    /// Since Linux 3.14.
    pub available: Option<u64>,
    pub buffers: Option<u64>,
    pub cached: Option<u64>,
    pub swap_total: Option<u64>,
    pub swap_free: Option<u64>,
}

impl Meminfo {
    /// MemAvailable, or on kernels without it MemFree + Buffers + Cached.
    pub fn available(&self) -> Option<u64> {
        self.available
            .or_else(|| Some(self.free? + self.buffers.unwrap_or(0) + self.cached.unwrap_or(0)))
    }

    pub fn used_percent(&self) -> Option<f64> {
        percent_used(self.total?, self.available()?)
    }

    /// `None` without swap.
    pub fn swap_used_percent(&self) -> Option<f64> {
        percent_used(self.swap_total?, self.swap_free?)
    }
}

fn percent_used(total: u64, left: u64) -> Option<f64> {
    (total > 0)
        .then(|| (total.saturating_sub(left) as f64 / total as f64 * 100.0).clamp(0.0, 100.0))
}

/// `/proc/meminfo`: `Name:   value kB` lines.
pub fn parse_meminfo(meminfo: &str) -> Meminfo {
    let mut memory = Meminfo::default();
    for line in meminfo.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let mut rest = rest.split_whitespace();
        let Some(Ok(value)) = rest.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match rest.next() {
            Some("kB") => value.saturating_mul(1024),
            None => value,
            Some(_) => continue,
        };
        let field = match name {
            "MemTotal" => &mut memory.total,
            "MemFree" => &mut memory.free,
            "MemAvailable" => &mut memory.available,
            "Buffers" => &mut memory.buffers,
            "Cached" => &mut memory.cached,
            "SwapTotal" => &mut memory.swap_total,
            "SwapFree" => &mut memory.swap_free,
            _ => continue,
        };
        *field = Some(bytes);
    }
    memory
}

/// An interface's byte counters from `/proc/net/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets … (8 receive
/// fields) tx_bytes …` per interface, in the kernel's order. `None` if it is not that.
pub fn parse_net_dev(net_dev: &str) -> Option<Vec<(String, NetCounters)>> {
    let mut interfaces = Vec::new();
    for line in net_dev.lines().skip(2) {
        let (name, counters) = line.split_once(':')?;
        let fields: Vec<u64> = counters
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        if fields.len() < 9 {
            return None;
        }
        interfaces.push((
            name.trim().to_owned(),
            NetCounters {
                rx_bytes: fields[0],
                tx_bytes: fields[8],
            },
        ));
    }
    Some(interfaces)
}

/// How much a byte counter grew. A counter that went down wrapped if it was a 32-bit one
/// (`unsigned long` on a 32-bit kernel) and both values fit 32 bits; otherwise it was
/// reset (the interface came back, the driver restarted) and the growth is unknown.
pub fn counter_delta(before: u64, after: u64) -> Option<u64> {
    const WRAP: u64 = 1 << 32;
    if after >= before {
        Some(after - before)
    } else if before < WRAP {
        Some(WRAP - before + after)
    } else {
        None
    }
}

fn rate(before: u64, after: u64, seconds: f64) -> Option<f64> {
    if seconds <= 0.0 {
        return None;
    }
    Some(counter_delta(before, after)? as f64 / seconds)
}

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub path: PathBuf,
    pub fstype: String,
}

/// `/proc/self/mounts`: `device path fstype options 0 0`, with spaces, tabs, newlines and
/// backslashes in the first two escaped as `\040`, `\011`, `\012`, `\134`.
pub fn parse_mounts(mounts: &str) -> Vec<Mount> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some(Mount {
                device: unescape(fields.next()?),
                path: PathBuf::from(unescape(fields.next()?)),
                fstype: fields.next()?.to_owned(),
            })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)))
                .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Filesystems that hold no data of the machine's own (kernel interfaces, memory),
/// are read-only images always full (squashfs: snaps), or are someone else's
/// (network filesystems, whose `statvfs` can hang when the server is gone).
pub const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "devpts",
    "ramfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "pstore",
    "bpf",
    "debugfs",
    "tracefs",
    "configfs",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "rpc_pipefs",
    "nsfs",
    "efivarfs",
    "selinuxfs",
    "squashfs",
    "iso9660",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "9p",
    "ceph",
    "glusterfs",
    "virtiofs",
    "nfsd",
];

/// Whether a mount is counted when no mounts are configured: not a pseudo filesystem
/// ([`PSEUDO`]), not FUSE but for `fuseblk` (NTFS or exFAT on a USB disk), and not
/// `overlay` but at `/` (a container's root, or Raspberry Pi OS's overlay root; elsewhere
/// it is a container's layers, which are the disk under them again).
pub fn is_real_mount(mount: &Mount) -> bool {
    let fstype = mount.fstype.as_str();
    if PSEUDO.contains(&fstype) {
        return false;
    }
    if fstype.starts_with("fuse") && fstype != "fuseblk" {
        return false;
    }
    if fstype == "overlay" {
        return mount.path == Path::new("/");
    }
    true
}

/// A filesystem's size and room, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    pub size: u64,
    /// Free, counting the blocks reserved for root.
    pub free: u64,
    /// Free for unprivileged users.
    pub available: u64,
}

impl DiskUsage {
    /// Used as `df` shows it: used / (used + available), so that a disk whose
    /// unreserved space is gone is 100% full.
    pub fn used_percent(&self) -> Option<f64> {
        let used = self.size.saturating_sub(self.free);
        let whole = used + self.available;
        (whole > 0).then(|| (used as f64 / whole as f64 * 100.0).clamp(0.0, 100.0))
    }
}

/// `statvfs` of the filesystem at `path`.
pub fn disk_usage(path: &Path) -> Option<DiskUsage> {
    let stat = rustix::fs::statvfs(path).ok()?;
    let block = stat.f_frsize;
    Some(DiskUsage {
        size: stat.f_blocks.saturating_mul(block),
        free: stat.f_bfree.saturating_mul(block),
        available: stat.f_bavail.saturating_mul(block),
    })
}

/// The thermal zones whose temperature can be read, named `temp_<type>`; zones of the
/// same type after the first (by zone number) get their number appended.
fn find_zones(thermal: &Path) -> Vec<Zone> {
    let Ok(entries) = fs::read_dir(thermal) else {
        return Vec::new();
    };
    let mut zones: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let number = entry
                .file_name()
                .to_str()?
                .strip_prefix("thermal_zone")?
                .parse()
                .ok()?;
            Some((number, entry.path()))
        })
        .collect();
    zones.sort();
    let mut found: Vec<Zone> = Vec::new();
    for (number, dir) in zones {
        let temp = dir.join("temp");
        if read_temperature(&temp).is_none() {
            continue;
        }
        let kind = fs::read_to_string(dir.join("type")).unwrap_or_default();
        let mut word = sanitize(kind.trim());
        if word.is_empty() {
            word = format!("zone{number}");
        }
        let mut name = metric_name("temp", &word);
        if found.iter().any(|zone| zone.name == name) {
            name = metric_name("temp", &format!("{word}_{number}"));
        }
        found.push(Zone { temp, name });
    }
    found
}

fn read_temperature(path: &Path) -> Option<f64> {
    parse_temperature(&fs::read_to_string(path).ok()?)
}

/// A thermal zone's `temp`: millidegrees Celsius.
pub fn parse_temperature(temp: &str) -> Option<f64> {
    Some(temp.trim().parse::<i64>().ok()? as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_PI: &str = "\
cpu  1061537 2470 338129 68497561 28193 0 5436 0 0 0
cpu0 266711 612 87214 17118047 7153 0 3498 0 0 0
cpu1 263840 628 83271 17127925 7009 0 683 0 0 0
cpu2 265425 615 84092 17125800 7013 0 628 0 0 0
cpu3 265560 614 83551 17125787 7017 0 626 0 0 0
intr 431372627 0 42891 91277486 0 0 0 0 0 0 0
ctxt 744279214
btime 1714560211
processes 1284766
procs_running 1
procs_blocked 0
softirq 202870380 3 72302466 15466 15416431 0 0 1017 55420618 0 59698379
";

    const MEMINFO_PI: &str = "\
MemTotal:        3885396 kB
MemFree:          862340 kB
MemAvailable:    2907420 kB
Buffers:          123456 kB
Cached:          1880328 kB
SwapCached:          512 kB
Active:           912340 kB
Inactive:        1726512 kB
SwapTotal:        102396 kB
SwapFree:          51198 kB
Dirty:                48 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    const NET_DEV_X86: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 6561022573 3810923    0    0    0     0          0         0 6561022573 3810923    0    0    0     0       0          0
enp3s0:12345678901234 98765432    0   12    0     0          0      1234 987654321  7654321    0    0    0     0       0          0
wlan0.100:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
";

    const MOUNTS_PI: &str = "\
/dev/mmcblk0p2 / ext4 rw,noatime 0 0
devtmpfs /dev devtmpfs rw,relatime,size=1800564k,nr_inodes=450141,mode=755 0 0
proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev,size=777080k,nr_inodes=819200,mode=755 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
/dev/mmcblk0p1 /boot/firmware vfat rw,relatime,fmask=0022,dmask=0022,codepage=437 0 0
/dev/sda1 /media/pi/My\\040Disk exfat rw,nosuid,nodev,relatime 0 0
/dev/loop0 /snap/core22/1380 squashfs ro,nodev,relatime,errors=continue 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw,relatime,lowerdir=/x 0 0
gvfsd-fuse /run/user/1000/gvfs fuse.gvfsd-fuse rw,nosuid,nodev,relatime 0 0
/dev/sdb1 /mnt/usb fuseblk rw,relatime 0 0
";

    #[test]
    fn stat_is_parsed_and_gives_a_busy_share() {
        let before = parse_stat(STAT_PI).unwrap();
        assert_eq!(
            before.total,
            1061537 + 2470 + 338129 + 68497561 + 28193 + 5436
        );
        assert_eq!(before.idle, 68497561 + 28193);
        let after = CpuTimes {
            total: before.total + 400,
            idle: before.idle + 300,
        };
        assert_eq!(cpu_percent(before, after), Some(25.0));
        assert_eq!(cpu_percent(before, before), None);
        // Idle stepping back does not make more than 100%.
        let odd = CpuTimes {
            total: before.total + 10,
            idle: before.idle - 5,
        };
        assert_eq!(cpu_percent(before, odd), Some(100.0));
        // An old kernel's four fields, and rubbish.
        assert_eq!(
            parse_stat("cpu  10 20 30 40\n"),
            Some(CpuTimes {
                total: 100,
                idle: 40
            })
        );
        assert_eq!(parse_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_stat("cpu  1 x 3 4\n"), None);
    }

    #[test]
    fn loadavg_and_uptime_are_parsed() {
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 1/389 12345\n"),
            Some([0.52, 0.58, 0.59])
        );
        assert_eq!(parse_loadavg("0.52 0.58\n"), None);
        assert_eq!(parse_uptime("350735.47 234388.90\n"), Some(350735.47));
        assert_eq!(parse_uptime(""), None);
    }

    #[test]
    fn meminfo_gives_memory_and_swap_use() {
        let memory = parse_meminfo(MEMINFO_PI);
        assert_eq!(memory.total, Some(3885396 * 1024));
        assert_eq!(memory.available(), Some(2907420 * 1024));
        let used = memory.used_percent().unwrap();
        assert!((used - 25.1706).abs() < 0.001, "{used}");
        assert_eq!(memory.swap_used_percent(), Some(50.0));
        // Without swap there is no swap share; without MemAvailable, free + caches.
        let old = parse_meminfo(
            "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 100 kB\nCached: 300 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
        );
        assert_eq!(old.available(), Some(500 * 1024));
        assert_eq!(old.used_percent(), Some(50.0));
        assert_eq!(old.swap_used_percent(), None);
        assert_eq!(parse_meminfo("nonsense").used_percent(), None);
    }

    #[test]
    fn net_dev_is_parsed_and_counters_wrap() {
        let interfaces = parse_net_dev(NET_DEV_X86).unwrap();
        let names: Vec<&str> = interfaces.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["lo", "enp3s0", "wlan0.100"]);
        assert_eq!(
            interfaces[1].1,
            NetCounters {
                rx_bytes: 12345678901234,
                tx_bytes: 987654321
            }
        );
        assert_eq!(parse_net_dev("header\nheader\neth0: 1 2 3\n"), None);
        assert_eq!(parse_net_dev("header\nheader\n"), Some(Vec::new()));

        assert_eq!(counter_delta(100, 150), Some(50));
        // A 32-bit counter wrapped.
        assert_eq!(counter_delta(u64::from(u32::MAX) - 9, 5), Some(15));
        // A 64-bit counter went back: reset, unknown.
        assert_eq!(counter_delta(1 << 40, 5), None);
        assert_eq!(rate(0, 1000, 2.0), Some(500.0));
        assert_eq!(rate(0, 1000, 0.0), None);
    }

    #[test]
    fn real_mounts_are_told_from_pseudo_ones() {
        let mounts = parse_mounts(MOUNTS_PI);
        assert_eq!(mounts.len(), 12);
        assert_eq!(mounts[7].path, Path::new("/media/pi/My Disk"));
        let real: Vec<&Path> = mounts
            .iter()
            .filter(|mount| is_real_mount(mount))
            .map(|mount| mount.path.as_path())
            .collect();
        assert_eq!(
            real,
            ["/", "/boot/firmware", "/media/pi/My Disk", "/mnt/usb"].map(Path::new)
        );
        let root_overlay = Mount {
            device: "overlay".into(),
            path: "/".into(),
            fstype: "overlay".into(),
        };
        assert!(is_real_mount(&root_overlay));
        assert_eq!(unescape(r"a\134b\011c\12"), "a\\b\tc\\12");
    }

    #[test]
    fn names_are_routing_key_words_unique_and_stable() {
        assert_eq!(sanitize("cpu-thermal"), "cpu_thermal");
        assert_eq!(sanitize("/var/log/"), "var_log");
        assert_eq!(sanitize("/media/pi/My Disk"), "media_pi_My_Disk");
        assert_eq!(sanitize("wlan0.100"), "wlan0_100");
        assert_eq!(sanitize("été"), "t");
        assert_eq!(sanitize("/"), "");

        let raw = |names: &[&str]| -> Vec<(String, String)> {
            names
                .iter()
                .map(|n| (n.to_string(), n.to_string()))
                .collect()
        };
        let words = unique_words(&raw(&["/mnt/a_b", "/mnt/a b", "/var/log"]));
        assert_eq!(words[1], "mnt_a_b");
        assert!(words[0].starts_with("mnt_a_b_") && words[0].len() == "mnt_a_b_".len() + 8);
        assert_eq!(words[2], "var_log");
        // The same whatever order they were found in.
        let again = unique_words(&raw(&["/var/log", "/mnt/a b", "/mnt/a_b"]));
        assert_eq!(again, [&words[2], &words[1], &words[0]].map(String::clone));

        let long = metric_name("disk_used", &"x".repeat(100));
        assert_eq!(long.len(), MAX_NAME_LEN);
        assert_ne!(long, metric_name("disk_used", &"x".repeat(101)));
        assert_eq!(metric_name("net_rx", "eth0"), "net_rx_eth0");
    }

    #[test]
    fn temperatures_are_millidegrees() {
        assert_eq!(parse_temperature("48312\n"), Some(48.312));
        assert_eq!(parse_temperature("-5000"), Some(-5.0));
        assert_eq!(parse_temperature(""), None);
    }

    #[test]
    fn the_config_defaults_and_refuses_unknown_fields() {
        let config: MachineConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, MachineConfig::default());
        assert!(config.enabled && config.temperature);
        let config: MachineConfig = serde_json::from_str(
            r#"{"mounts": ["/", "/data"], "interfaces": ["eth0"], "temperature": false}"#,
        )
        .unwrap();
        assert_eq!(config.mounts, [PathBuf::from("/"), PathBuf::from("/data")]);
        assert!(!config.temperature);
        assert!(serde_json::from_str::<MachineConfig>(r#"{"mount": []}"#).is_err());
        let disabled = MachineMetrics::new(MachineConfig {
            enabled: false,
            ..MachineConfig::default()
        });
        assert!(disabled.metrics().is_empty() && disabled.read().is_empty());
    }
}
