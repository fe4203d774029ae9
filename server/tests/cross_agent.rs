//! The cross-built agents, for real: the static aarch64 `tether-agent` and the armv7
//! one (glibc 2.17, run with Debian's armhf C library) that `scripts/cross-build.sh
//! aarch64 armv7` makes, each run under qemu-user against a server with its own broker,
//! provisioned over the API: it comes online, runs a command sent through the API and
//! exits cleanly on SIGTERM. And their `.deb`s: the architecture, the dependencies, and
//! the binary, the systemd unit and the configuration (a conffile) inside. (The
//! footprint is measured by `benches/agent_footprint.rs`.)
//!
//! The binaries: TETHER_AARCH64_AGENT and TETHER_ARMV7_AGENT, by default
//! `<target dir>/cross/<triple>/tether-agent`, the `.deb`s beside them. A missing binary,
//! package, qemu or armhf C library fails the test, with what to run; it is never
//! skipped.

#[path = "support/cross.rs"]
mod cross;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use cross::*;
use protocol::{CommandStatus, DeviceId};

/// Where Debian's `libc6-armhf-cross` puts the armhf C library qemu-arm needs.
const ARMHF_SYSROOT: &str = "/usr/arm-linux-gnueabihf";

fn aarch64() -> PathBuf {
    agent_binary(
        "TETHER_AARCH64_AGENT",
        "aarch64-unknown-linux-musl",
        "aarch64",
    )
}

fn armv7() -> PathBuf {
    agent_binary(
        "TETHER_ARMV7_AGENT",
        "armv7-unknown-linux-gnueabihf",
        "armv7",
    )
}

#[tokio::test]
async fn the_cross_built_aarch64_agent_runs_under_qemu_and_obeys_commands() {
    let qemu = on_path(
        "qemu-aarch64-static",
        "apt-get install -y qemu-user-static (then run `scripts/cross-build.sh aarch64` if \
         the agent is not built yet)",
    );
    obeys_commands_under(&qemu, &[], &aarch64(), "aarch64").await;
}

#[tokio::test]
async fn the_cross_built_armv7_agent_runs_under_qemu_and_obeys_commands() {
    let qemu = on_path(
        "qemu-arm-static",
        "apt-get install -y qemu-user-static (then run `scripts/cross-build.sh armv7` if \
         the agent is not built yet)",
    );
    assert!(
        Path::new(ARMHF_SYSROOT).join("lib/libc.so.6").is_file(),
        "no armhf C library in {ARMHF_SYSROOT}: apt-get install -y libc6-armhf-cross"
    );
    obeys_commands_under(&qemu, &["-L", ARMHF_SYSROOT], &armv7(), "armv7").await;
}

/// Runs `binary` under `qemu qemu_args…` as a provisioned gateway, commands it through
/// the API and stops it with SIGTERM.
async fn obeys_commands_under(qemu: &Path, qemu_args: &[&str], binary: &Path, arch: &str) {
    let (server, admin) = server_and_admin().await;
    let (id, secret, url) = provision(&server, &admin, &format!("qemu-{arch}")).await;

    let binary = binary.to_str().unwrap();
    let mut args: Vec<&str> = qemu_args.to_vec();
    args.extend([
        binary,
        "--device-id",
        &id,
        "--kind",
        "gateway",
        "--heartbeat-ms",
        "1000",
    ]);
    let mut agent = Agent::spawn(
        qemu,
        &args,
        &[("TETHER_AMQP_URL", &url), ("TETHER_DEVICE_SECRET", &secret)],
    );

    // Online (under emulation, startup takes a moment longer than natively).
    let device = DeviceId::new(&id).unwrap();
    testkit::eventually(
        &format!("{id} ({arch}, under qemu) online"),
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

#[test]
fn the_debs_hold_the_agent_its_unit_and_its_configuration() {
    for (binary, architecture, depends) in [
        (aarch64(), "arm64", "adduser"),
        (armv7(), "armhf", "libc6 (>= 2.17)"),
    ] {
        let dir = binary.parent().unwrap();
        let deb = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.extension().is_some_and(|e| e == "deb"))
            .unwrap_or_else(|| panic!("no .deb in {}: run scripts/cross-build.sh", dir.display()));
        let field = |name: &str| dpkg_deb(&["-f", deb.to_str().unwrap(), name]);
        assert_eq!(field("Package").trim(), "tether-agent");
        assert_eq!(
            field("Architecture").trim(),
            architecture,
            "{}",
            deb.display()
        );
        let depends_on = field("Depends");
        assert!(
            depends_on.contains(depends),
            "{}: Depends: {depends_on}",
            deb.display()
        );

        let contents = dpkg_deb(&["-c", deb.to_str().unwrap()]);
        for path in [
            "./usr/bin/tether-agent",
            "/systemd/system/tether-agent.service",
            "./etc/tether/agent.toml",
        ] {
            assert!(
                contents.contains(path),
                "{} lacks {path}:\n{contents}",
                deb.display()
            );
        }
        let control = std::env::temp_dir().join(testkit::unique("tether-deb-control"));
        dpkg_deb(&["-e", deb.to_str().unwrap(), control.to_str().unwrap()]);
        let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
        assert!(
            conffiles.lines().any(|l| l == "/etc/tether/agent.toml"),
            "the configuration is a conffile (kept on upgrade): {conffiles:?}"
        );
        for script in ["postinst", "postrm"] {
            assert!(
                control.join(script).is_file(),
                "no {script} in {}",
                deb.display()
            );
        }
        let _ = std::fs::remove_dir_all(&control);
    }
}

/// `dpkg-deb args…`'s output; a failure fails the test.
fn dpkg_deb(args: &[&str]) -> String {
    let output = Command::new("dpkg-deb")
        .args(args)
        .output()
        .expect("dpkg-deb runs (Debian's dpkg)");
    assert!(
        output.status.success(),
        "dpkg-deb {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
