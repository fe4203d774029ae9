//! What the benchmarks read of this machine and of the processes they start, from
//! `/proc`, and a child process killed when dropped. Shared by the benches with
//! `#[path = "support/host.rs"] mod host;` (each uses what it needs).
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Child,
};

/// A bench's own arguments, in order: what follows `--` in `cargo bench … -- a b`,
/// without the flags cargo adds (`--bench`).
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Self {
        Self(
            std::env::args()
                .skip(1)
                .filter(|a| !a.starts_with('-'))
                .collect(),
        )
    }

    pub fn get(&self, index: usize) -> Option<&str> {
        self.0.get(index).map(String::as_str)
    }

    /// Argument `index` (`what`, for the message): `default` when absent, an error
    /// when it does not parse, rather than a run of another size than asked.
    pub fn parsed<T>(&self, index: usize, what: &str, default: T) -> anyhow::Result<T>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(index) {
            None => Ok(default),
            Some(text) => parse(text, what),
        }
    }

    /// Argument `index` as a comma-separated list, `default` when absent.
    pub fn list<T>(&self, index: usize, what: &str, default: &str) -> anyhow::Result<Vec<T>>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        parse_list(self.get(index).unwrap_or(default), what)
    }
}

/// A setting from the environment: `None` when unset, an error when it does not parse.
pub fn setting<T>(name: &str) -> anyhow::Result<Option<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    std::env::var(name)
        .ok()
        .map(|text| parse(&text, name))
        .transpose()
}

/// A comma-separated list from the environment, `default` when unset.
pub fn list_setting<T>(name: &str, default: &str) -> anyhow::Result<Vec<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    parse_list(
        &std::env::var(name).unwrap_or_else(|_| default.to_owned()),
        name,
    )
}

fn parse<T>(text: &str, what: &str) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    text.trim()
        .parse()
        .map_err(|error| anyhow::anyhow!("{what}: {text:?} does not parse: {error}"))
}

fn parse_list<T>(text: &str, what: &str) -> anyhow::Result<Vec<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    text.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| parse(item, what))
        .collect()
}

/// A child process, killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The release `tether-agent`: `TETHER_AGENT_BIN`, else under the target folder.
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TETHER_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("release/tether-agent")
}

/// A process's user and system CPU time, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: state is field 3; utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// Clock ticks a second (`getconf CLK_TCK`, 100 on Linux).
pub fn ticks_per_second() -> f64 {
    100.0
}

/// A number field of `/proc/<pid>/status` (`name` with its colon, e.g. `VmRSS:`).
pub fn status_field(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A process's resident memory, in KiB.
pub fn rss_kb(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

pub fn threads(pid: u32) -> u64 {
    status_field(pid, "Threads:")
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into())
}
