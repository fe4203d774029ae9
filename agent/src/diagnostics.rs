//! The built-in `diagnostics` command: a report of the device, in the reply (at most
//! [`MAX_REPORT_BYTES`] of JSON):
//!
//! - `os`: `NAME`, `VERSION_ID` and `PRETTY_NAME` of `/etc/os-release`;
//! - `kernel`: `/proc/sys/kernel/osrelease` and the architecture;
//! - `hostname`, `agent_version`, `uptime_s`;
//! - `config`: the agent's configuration with its secrets removed (the secret is `***`,
//!   the URL's password too, action environment values too);
//! - `disks`: the real filesystems, with their size and room;
//! - `network`: the interfaces of `/proc/net/dev`, with their state and addresses from
//!   `ip -brief addr` when `ip` is installed;
//! - `time_sync`: `timedatectl show -p NTPSynchronized --value` (`yes`, `no`), or
//!   `unknown`;
//! - `agent_log`: the last lines of the log source named `agent` when there is one
//!   (configure it as `agent = { unit = "tether-agent.service" }`), else
//!   `"not configured"`.
//!
//! Programs are run like actions: directly, never through a shell, bounded in time and
//! output.

use std::{path::Path, sync::Arc, time::Duration};

use protocol::CommandSpec;
use serde_json::{Value, json};

use crate::{
    Command, CommandError,
    logs::{Filter, Logs, Source, run_bounded, tail_file},
    machine,
};

/// The largest report.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// How many lines of the agent's own log the report holds.
pub const AGENT_LOG_LINES: usize = 50;
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(5);
const PROGRAM_MAX_BYTES: usize = 32 * 1024;
const MAX_DISKS: usize = 32;
const MAX_INTERFACES: usize = 64;

/// What the `diagnostics` command reports from besides the machine itself.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    /// The configuration, secrets removed ([`crate::config_file::Loaded::redacted`]).
    pub config: Option<Value>,
    /// The log sources; the one named `agent` is the agent's own log.
    pub logs: Option<Arc<Logs>>,
}

impl Diagnostics {
    /// The command announced for it: no arguments.
    pub fn command() -> CommandSpec {
        CommandSpec {
            name: protocol::capability::builtin::DIAGNOSTICS.into(),
            description: "A report of the device: system, configuration, disks, network, time"
                .into(),
            args: Vec::new(),
        }
    }

    /// Runs the `diagnostics` command.
    ///
    /// # Errors
    /// Never, in practice: what cannot be found out is reported as such.
    pub async fn run(&self, _command: &Command) -> Result<Value, CommandError> {
        Ok(self.report().await)
    }

    /// The report.
    pub async fn report(&self) -> Value {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let os = read("/etc/os-release")
            .or_else(|| read("/usr/lib/os-release"))
            .map_or(Value::Null, |text| os_release(&text));
        let mut report = json!({
            "os": os,
            "kernel": {
                "release": read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()),
                "arch": std::env::consts::ARCH,
            },
            "hostname": read("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()),
            "agent_version": env!("CARGO_PKG_VERSION"),
            "uptime_s": read("/proc/uptime").as_deref().and_then(machine::parse_uptime),
            "config": self.config.clone().unwrap_or_else(|| json!("not given")),
            "disks": disks(),
            "network": network().await,
            "time_sync": time_sync().await,
            "agent_log": self.agent_log().await,
        });
        // Bounded: the log goes first, then the lists are cut.
        if report.to_string().len() > MAX_REPORT_BYTES {
            report["agent_log"] = json!("left out: the report was too large");
        }
        for key in ["network", "disks", "config"] {
            if report.to_string().len() > MAX_REPORT_BYTES {
                report[key] = json!("left out: the report was too large");
            }
        }
        report
    }

    async fn agent_log(&self) -> Value {
        let Some(source) = self
            .logs
            .as_ref()
            .and_then(|logs| logs.sources.get("agent"))
        else {
            return json!("not configured");
        };
        let lines = match source {
            Source::File(path) => tail_file(path, AGENT_LOG_LINES, &Filter::new(None))
                .map(|(lines, _, _)| lines)
                .map_err(|error| format!("{}: {error}", path.display())),
            Source::Unit(unit) => run_bounded(
                Path::new(crate::logs::JOURNALCTL),
                &[
                    "-u".into(),
                    unit.clone(),
                    "-n".into(),
                    AGENT_LOG_LINES.to_string(),
                    "--no-pager".into(),
                    "-o".into(),
                    "short-iso".into(),
                ],
                PROGRAM_TIMEOUT,
                PROGRAM_MAX_BYTES,
            )
            .await
            .map(|text| text.lines().map(str::to_owned).collect()),
        };
        match lines {
            Ok(lines) => json!(
                lines
                    .into_iter()
                    .map(|line| cut(&line, 500))
                    .collect::<Vec<_>>()
            ),
            Err(error) => json!({ "error": error }),
        }
    }
}

fn cut(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_owned();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} […]", &line[..end])
}

/// `NAME`, `VERSION_ID` and `PRETTY_NAME` of an os-release file.
pub fn os_release(text: &str) -> Value {
    let mut os = serde_json::Map::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if matches!(key, "NAME" | "VERSION_ID" | "PRETTY_NAME") {
            let value = value.trim().trim_matches(['"', '\'']);
            os.insert(key.to_owned(), json!(cut(value, 200)));
        }
    }
    Value::Object(os)
}

fn disks() -> Value {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return json!([]);
    };
    let mut seen = std::collections::BTreeSet::new();
    let disks: Vec<Value> = machine::parse_mounts(&mounts)
        .into_iter()
        .filter(machine::is_real_mount)
        .filter(|mount| seen.insert(mount.path.clone()))
        .take(MAX_DISKS)
        .map(|mount| {
            let usage = machine::disk_usage(&mount.path);
            json!({
                "device": cut(&mount.device, 200),
                "mount": cut(&mount.path.display().to_string(), 200),
                "fstype": mount.fstype,
                "size_bytes": usage.map(|u| u.size),
                "available_bytes": usage.map(|u| u.available),
                "used_percent": usage.and_then(|u| u.used_percent()),
            })
        })
        .collect();
    json!(disks)
}

/// The first of `candidates` that exists.
fn installed(candidates: &[&'static str]) -> Option<&'static Path> {
    candidates
        .iter()
        .map(|path| Path::new(*path))
        .find(|path| path.is_file())
}

/// One line of `ip -brief addr`: `name state address…` (the name may be `eth0@if5`).
pub fn parse_ip_brief(text: &str) -> Vec<(String, String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let name = name.split('@').next().unwrap_or(name).to_owned();
            let state = fields.next().unwrap_or_default().to_owned();
            Some((name, state, fields.map(str::to_owned).collect()))
        })
        .collect()
}

async fn network() -> Value {
    let names: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .ok()
        .as_deref()
        .and_then(machine::parse_net_dev)
        .map(|interfaces| interfaces.into_iter().map(|(name, _)| name).collect())
        .unwrap_or_default();
    let brief = match installed(&["/usr/sbin/ip", "/sbin/ip", "/bin/ip", "/usr/bin/ip"]) {
        Some(ip) => run_bounded(
            ip,
            &["-brief".into(), "addr".into()],
            PROGRAM_TIMEOUT,
            PROGRAM_MAX_BYTES,
        )
        .await
        .map(|text| parse_ip_brief(&text))
        .ok(),
        None => None,
    };
    let mut interfaces: Vec<Value> = names
        .iter()
        .map(|name| {
            let found = brief
                .as_ref()
                .and_then(|brief| brief.iter().find(|(n, _, _)| n == name));
            match found {
                Some((_, state, addresses)) => {
                    json!({ "name": name, "state": state, "addresses": addresses })
                }
                None => json!({ "name": name }),
            }
        })
        .collect();
    // Interfaces `ip` knows that /proc/net/dev did not list (another namespace's view).
    for (name, state, addresses) in brief.iter().flatten() {
        if !names.contains(name) {
            interfaces.push(json!({ "name": name, "state": state, "addresses": addresses }));
        }
    }
    interfaces.truncate(MAX_INTERFACES);
    json!(interfaces)
}

async fn time_sync() -> Value {
    let Some(timedatectl) = installed(&["/usr/bin/timedatectl", "/bin/timedatectl"]) else {
        return json!("unknown");
    };
    match run_bounded(
        timedatectl,
        &[
            "show".into(),
            "-p".into(),
            "NTPSynchronized".into(),
            "--value".into(),
        ],
        PROGRAM_TIMEOUT,
        1024,
    )
    .await
    {
        Ok(text) => match text.trim() {
            "yes" => json!({ "ntp_synchronized": true }),
            "no" => json!({ "ntp_synchronized": false }),
            _ => json!("unknown"),
        },
        Err(_) => json!("unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_and_ip_brief_are_read() {
        let os = os_release(
            "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n",
        );
        assert_eq!(os["NAME"], "Debian GNU/Linux");
        assert_eq!(os["VERSION_ID"], "12");
        assert!(os.get("ID").is_none());
        let brief = parse_ip_brief(
            "lo               UNKNOWN        127.0.0.1/8 ::1/128\neth0@if5         UP             172.17.0.2/16\n",
        );
        assert_eq!(brief[1].0, "eth0");
        assert_eq!(brief[0].2, vec!["127.0.0.1/8", "::1/128"]);
    }
}
