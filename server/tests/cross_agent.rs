//! The cross-built agent, for real: the static aarch64 `tether-agent` that
//! `scripts/cross-build.sh aarch64` makes, run under qemu-user against a server with its
//! own broker, provisioned over the API, comes online, runs a command sent through the
//! API and exits cleanly on SIGTERM. (Its footprint is measured by
//! `benches/agent_footprint.rs`.)
//!
//! The binary: TETHER_AARCH64_AGENT, by default
//! `<target dir>/cross/aarch64-unknown-linux-musl/tether-agent`. A missing binary or
//! qemu-aarch64-static fails the test, with what to run; it is never skipped.

#[path = "support/cross.rs"]
mod cross;

use std::time::Duration;

use cross::*;
use protocol::{CommandStatus, DeviceId};

#[tokio::test]
async fn the_cross_built_aarch64_agent_runs_under_qemu_and_obeys_commands() {
    let binary = agent_binary(
        "TETHER_AARCH64_AGENT",
        "aarch64-unknown-linux-musl",
        "aarch64",
    );
    let qemu = on_path(
        "qemu-aarch64-static",
        "apt-get install -y qemu-user-static (then run `scripts/cross-build.sh aarch64` if \
         the agent is not built yet)",
    );
    let (server, admin) = server_and_admin().await;
    let (id, secret, url) = provision(&server, &admin, "qemu-gw").await;

    let binary = binary.to_str().unwrap();
    let mut agent = Agent::spawn(
        &qemu,
        &[
            binary,
            "--device-id",
            &id,
            "--kind",
            "gateway",
            "--heartbeat-ms",
            "1000",
        ],
        &[("TETHER_AMQP_URL", &url), ("TETHER_DEVICE_SECRET", &secret)],
    );

    // Online (under emulation, startup takes a moment longer than natively).
    let device = DeviceId::new(&id).unwrap();
    testkit::eventually(
        &format!("{id} (aarch64, under qemu) online"),
        Duration::from_secs(30),
        || server.hub.device(&device).filter(|d| d.online),
    )
    .await;

    let done = echo(&server, &admin, &id).await;
    assert_eq!(done.status, CommandStatus::Succeeded, "{done:?}");

    // SIGTERM: it says goodbye and exits 0.
    let status = agent
        .terminate(Duration::from_secs(10))
        .await
        .expect("the agent exits within 10 s of SIGTERM");
    assert!(status.success(), "the agent exited with {status}");
    testkit::eventually(
        &format!("{id} offline after SIGTERM"),
        Duration::from_secs(10),
        || server.hub.device(&device).filter(|d| !d.online),
    )
    .await;
}
