//! Interop with a client nobody here wrote: Python's pika (Debian's python3-pika, which
//! scripts/bootstrap.sh installs) against the embedded broker. Fails, saying why, if
//! Python or pika is missing.

use std::process::Command;

use broker::{Broker, Config};

#[tokio::test(flavor = "multi_thread")]
async fn pika_publishes_consumes_confirms_gets_returns_and_does_rpc() {
    let url = Broker::start(Config::on_free_port())
        .await
        .expect("the embedded broker starts");

    let python = std::env::var("TETHER_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/pika_client.py");
    let output = tokio::task::spawn_blocking(move || Command::new(&python).arg(script).arg(&url).output())
        .await
        .expect("the client ran")
        .unwrap_or_else(|e| panic!("cannot run Python for the pika interop test ({e}); install python3-pika or set TETHER_PYTHON"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pika failed against the embedded broker:\n{stdout}\n{stderr}"
    );
    for check in [
        "publish, consume, ack",
        "mandatory publish returned",
        "rpc with reply queue",
        "closed",
    ] {
        assert!(stdout.contains(check), "missing check {check:?}:\n{stdout}");
    }
}
