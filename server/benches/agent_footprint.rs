//! The agent's footprint for BENCHMARKS.md: the x86_64 musl `tether-agent` that
//! `scripts/cross-build.sh x86_64` makes (TETHER_X86_64_AGENT), its resident memory
//! after `TETHER_FOOTPRINT_SECS` (60) s online, and the bytes on the wire per heartbeat
//! and per reading, counted by a TCP proxy between it and a server's own broker. Not a
//! test: it measures and reports.
//!
//! ```text
//! scripts/cross-build.sh x86_64 && cargo bench -p server --bench agent_footprint
//! ```

#[path = "../tests/support/cross.rs"]
mod cross;

use std::time::{Duration, Instant};

use protocol::DeviceId;

use cross::*;

/// The footprint numbers of BENCHMARKS.md: two x86_64 musl agents (gateways), one with
/// no readings and one with readings every 5 s, both with a heartbeat every 5 s, each
/// through its own counting proxy, online for `TETHER_FOOTPRINT_SECS` (60) s.
#[tokio::main]
async fn main() {
    let binary = agent_binary("TETHER_X86_64_AGENT", "x86_64-unknown-linux-musl", "x86_64");
    let secs: u64 = std::env::var("TETHER_FOOTPRINT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // Appended to the agents' broker URL, e.g. `?frame_max=8192`: lapin keeps send and
    // receive buffers of 32 frames each, so the frame size the broker offers (128 KiB
    // from the embedded broker) is 8 MiB of resident memory unless the URL asks for less.
    let query = std::env::var("TETHER_FOOTPRINT_URL_QUERY").unwrap_or_default();
    let (server, admin) = server_and_admin().await;
    let mut runs = Vec::new();
    for (name, telemetry_ms) in [("quiet", "0"), ("telemetry", "5000")] {
        let (id, secret, url) = provision(&server, &admin, &format!("fp-{name}")).await;
        let (addr, counts) = proxy(host_port(&url)).await;
        let agent = Agent::spawn(
            &binary,
            &[
                "--device-id",
                &id,
                "--kind",
                "gateway",
                "--heartbeat-ms",
                "5000",
                "--telemetry-ms",
                telemetry_ms,
            ],
            &[
                ("TETHER_AMQP_URL", &format!("{}{query}", via(&url, &addr))),
                ("TETHER_DEVICE_SECRET", &secret),
            ],
        );
        runs.push((name, id, agent, counts));
    }
    for (_, id, _, _) in &runs {
        testkit::online(&server.hub, &DeviceId::new(id).unwrap()).await;
    }
    // Past the handshake, the hello and the first readings: then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start: Vec<_> = runs
        .iter()
        .map(|run| (run.3.get(), run.3.frames()))
        .collect();
    let started = Instant::now();
    let mut sampled = Vec::new();
    for (name, _, agent, _) in &runs {
        sampled.push((*name, agent.pid(), memory(agent.pid())));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = started.elapsed().as_secs_f64();
    println!("footprint over {elapsed:.1} s (heartbeat every 5 s):");
    let beats = elapsed / 5.0;
    let mut totals = Vec::new();
    for ((name, id, agent, counts), ((up0, down0), frames0)) in runs.iter().zip(start) {
        let (up, down) = counts.get();
        let (rss, hwm, rest) = memory(agent.pid());
        let (up, down) = (up - up0, down - down0);
        println!(
            "  {name:10} {id}: up {up} B, down {down} B ({:.1} B per 5 s up, {:.1} down); \
             VmRSS {rss} kB, VmHWM {hwm} kB ({rest})",
            up as f64 / beats,
            down as f64 / beats
        );
        for (kind, (count, bytes)) in counts.frames() {
            let (count0, bytes0) = frames0.get(&kind).copied().unwrap_or_default();
            let what = match kind {
                1 => "method",
                2 => "content header",
                3 => "content body",
                8 => "heartbeat",
                _ => "other",
            };
            println!(
                "    up, {what} frames: {} ({} bytes with framing)",
                count - count0,
                bytes - bytes0
            );
        }
        totals.push((up, down));
    }
    let ((quiet_up, quiet_down), (busy_up, busy_down)) = (totals[0], totals[1]);
    println!(
        "  per heartbeat (quiet run / {beats:.1}): {:.0} B up, {:.0} B down",
        quiet_up as f64 / beats,
        quiet_down as f64 / beats
    );
    println!(
        "  per reading (telemetry run - quiet run, / {beats:.1}): {:.0} B up, {:.0} B down",
        (busy_up as f64 - quiet_up as f64) / beats,
        (busy_down as f64 - quiet_down as f64) / beats
    );
    for (name, pid, (rss, hwm, _)) in sampled {
        println!(
            "  {name:10} at the start of the window (pid {pid}): VmRSS {rss} kB, VmHWM {hwm} kB"
        );
    }
    println!(
        "  binary {}: {} bytes",
        binary.display(),
        std::fs::metadata(&binary).unwrap().len()
    );
    for (_, _, mut agent, _) in runs {
        let status = agent.terminate(Duration::from_secs(10)).await;
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    }
}
