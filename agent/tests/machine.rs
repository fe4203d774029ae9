//! The machine's own metrics: read from this machine's real `/proc` and `/sys`, and from
//! made-up ones, to see sources left out, values skipped and rates measured.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use agent::{
    Readings,
    machine::{MachineConfig, MachineMetrics},
};
use protocol::DeviceId;

/// A metric name is one word of `telemetry.<device>.<metric>`: the characters a device
/// id may have.
fn assert_routing_word(name: &str) {
    assert!(
        DeviceId::new(name).is_ok() && !name.contains('.'),
        "{name:?} is not one routing-key word"
    );
}

#[test]
fn this_machine_reports_every_announced_metric_within_its_range() {
    let machine = MachineMetrics::new(MachineConfig::default());
    let specs = machine.metrics();
    let names: BTreeSet<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
    assert_eq!(names.len(), specs.len(), "names repeat: {specs:?}");
    for name in &names {
        assert_routing_word(name);
    }
    // Linux always has these.
    for name in [
        "cpu",
        "load_1m",
        "memory_used",
        "memory_available",
        "uptime",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    assert!(
        names.iter().any(|name| name.starts_with("disk_used_")),
        "no disk in {names:?}"
    );

    machine.read();
    // Long enough for CPU ticks (10 ms each) to pass.
    std::thread::sleep(Duration::from_millis(250));
    let values: BTreeMap<String, f64> = machine.read().into_iter().collect();
    for spec in &specs {
        let value = values
            .get(&spec.name)
            .unwrap_or_else(|| panic!("no value for {}: {values:?}", spec.name));
        assert!(
            spec.admits(*value),
            "{} = {value} outside {spec:?}",
            spec.name
        );
    }
    assert_eq!(values.len(), specs.len(), "{values:?}");
    assert!((0.0..=100.0).contains(&values["cpu"]));
    eprintln!("{values:#?}");
}

/// A made-up `/proc` and `/sys` in a directory of its own, removed when dropped.
struct Fake(PathBuf);

impl Fake {
    fn new(name: &str) -> Self {
        let root =
            std::env::temp_dir().join(format!("tether-machine-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("proc/self")).unwrap();
        fs::create_dir_all(root.join("proc/net")).unwrap();
        fs::create_dir_all(root.join("sys")).unwrap();
        Self(root)
    }

    fn write(&self, file: &str, contents: &str) {
        let path = self.0.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    fn proc(&self) -> PathBuf {
        self.0.join("proc")
    }

    fn sys(&self) -> PathBuf {
        self.0.join("sys")
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn net_dev(eth0_rx: u64, eth0_tx: u64) -> String {
    format!(
        "Inter-|   Receive                                                |  Transmit\n \
         face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
         lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0\n  \
         eth0:{eth0_rx} 100 0 0 0 0 0 0 {eth0_tx} 50 0 0 0 0 0 0\n \
         wlan0: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
    )
}

#[test]
fn made_up_sources_are_measured_and_what_fails_is_skipped() {
    let fake = Fake::new("sources");
    fake.write(
        "proc/stat",
        "cpu  1000 0 500 8000 500 0 0 0 0 0\ncpu0 1000 0 500 8000 500 0 0 0 0 0\n",
    );
    fake.write("proc/loadavg", "0.25 0.50 1.00 1/100 4242\n");
    fake.write(
        "proc/meminfo",
        "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 400 kB\nSwapTotal: 200 kB\nSwapFree: 150 kB\n",
    );
    fake.write("proc/uptime", "1234.5 999.0\n");
    fake.write(
        "proc/self/mounts",
        "/dev/fake / ext4 rw 0 0\nproc /proc proc rw 0 0\n/dev/gone /no/such/dir ext4 rw 0 0\n",
    );
    // Just under a 32-bit counter's wrap.
    fake.write("proc/net/dev", &net_dev(u64::from(u32::MAX) - 999, 5000));
    fake.write("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
    fake.write("sys/class/thermal/thermal_zone0/temp", "48312\n");
    fake.write("sys/class/thermal/thermal_zone1/type", "acpitz\n");
    fake.write("sys/class/thermal/thermal_zone1/temp", "30000\n");
    fake.write("sys/class/thermal/thermal_zone2/type", "acpitz\n");
    fake.write("sys/class/thermal/thermal_zone2/temp", "31000\n");
    // A zone that does not answer (a wifi card that is down) is left out.
    fake.write("sys/class/thermal/thermal_zone3/type", "iwlwifi_1\n");
    fake.write("sys/class/thermal/cooling_device0/type", "fan\n");

    let machine = MachineMetrics::with_roots(MachineConfig::default(), fake.proc(), fake.sys());
    let specs = machine.metrics();
    let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "cpu",
            "load_1m",
            "load_5m",
            "load_15m",
            "memory_used",
            "memory_available",
            "swap_used",
            "disk_used_root",
            "disk_free_root",
            "uptime",
            "temp_cpu_thermal",
            "temp_acpitz",
            "temp_acpitz_2",
            "net_rx_eth0",
            "net_tx_eth0",
            "net_rx_wlan0",
            "net_tx_wlan0",
        ]
    );
    let unit = |name: &str| specs.iter().find(|s| s.name == name).unwrap().unit.clone();
    assert_eq!(unit("cpu"), "%");
    assert_eq!(unit("memory_available"), "B");
    assert_eq!(unit("disk_free_root"), "B");
    assert_eq!(unit("uptime"), "s");
    assert_eq!(unit("temp_acpitz"), "°C");
    assert_eq!(unit("net_rx_eth0"), "B/s");

    // 100 ticks, 25 of them idle or waiting; eth0 received 2000 bytes across the wrap.
    fake.write("proc/stat", "cpu  1050 0 525 8020 505 0 0 0 0 0\n");
    fake.write("proc/net/dev", &net_dev(1000, 5000));
    fs::remove_file(fake.0.join("sys/class/thermal/thermal_zone0/temp")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let values: BTreeMap<String, f64> = machine.read().into_iter().collect();
    assert_eq!(values["cpu"], 75.0);
    assert_eq!(values["load_15m"], 1.0);
    assert_eq!(values["memory_used"], 60.0);
    assert_eq!(values["memory_available"], 400.0 * 1024.0);
    assert_eq!(values["swap_used"], 25.0);
    assert_eq!(values["uptime"], 1234.5);
    assert_eq!(values["temp_acpitz"], 30.0);
    assert_eq!(values["temp_acpitz_2"], 31.0);
    assert!(
        !values.contains_key("temp_cpu_thermal"),
        "a zone that failed is skipped"
    );
    let rx = values["net_rx_eth0"];
    assert!(rx > 0.0 && rx <= 2000.0 / 0.02, "{rx}");
    assert_eq!(values["net_tx_eth0"], 0.0);
    assert_eq!(values["net_rx_wlan0"], 0.0);
    assert!((0.0..=100.0).contains(&values["disk_used_root"]));

    // Files that go away or turn to rubbish skip their values, and nothing panics.
    fs::remove_file(fake.0.join("proc/stat")).unwrap();
    fake.write("proc/meminfo", "garbage\n");
    fake.write("proc/net/dev", "nothing useful\n");
    let values: BTreeMap<String, f64> = machine.read().into_iter().collect();
    for gone in ["cpu", "memory_used", "swap_used", "net_rx_eth0"] {
        assert!(!values.contains_key(gone), "{gone} in {values:?}");
    }
    assert!(values.contains_key("uptime"));
}

#[test]
fn configured_sources_that_are_not_there_are_left_out() {
    let fake = Fake::new("configured");
    fake.write("proc/net/dev", &net_dev(1, 2));
    let config = MachineConfig {
        mounts: vec![PathBuf::from("/"), PathBuf::from("/no/such/mount")],
        interfaces: vec!["eth0".into(), "missing0".into()],
        temperature: false,
        ..MachineConfig::default()
    };
    let machine = MachineMetrics::with_roots(config, fake.proc(), fake.sys());
    let names: Vec<String> = machine
        .metrics()
        .into_iter()
        .map(|spec| spec.name)
        .collect();
    assert_eq!(
        names,
        [
            "disk_used_root",
            "disk_free_root",
            "net_rx_eth0",
            "net_tx_eth0"
        ]
    );

    // No /proc or /sys at all: nothing to announce, nothing to read.
    let nothing = MachineMetrics::with_roots(
        MachineConfig::default(),
        Path::new("/no/such/proc"),
        Path::new("/no/such/sys"),
    );
    assert!(nothing.metrics().is_empty());
    assert!(nothing.read().is_empty());
}
