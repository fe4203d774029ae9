//! The configuration file: a good one loads, every mistake is reported at its line,
//! flags win over the file, a secret file others can read is refused, and
//! `tether-agent --check-config` exits 0 or 1 without connecting.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use agent::config_file::{Overrides, load};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-config-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `agent.toml` and a 0600 `secret` beside it.
fn write(dir: &Path, toml: &str) -> PathBuf {
    let secret = dir.join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

const GOOD: &str = r#"amqp_url = "amqp://broker.lan:5672/%2f"
device_id = "boiler-1"
secret_file = "secret"
kind = "gateway"
firmware = "2.0"
heartbeat_ms = 2000
telemetry_ms = 0

[machine]
enabled = false

[[actions]]
name = "say"
description = "Echo"
program = "/bin/echo"
argv = ["{word}"]
args = [{ name = "word", type = "choice", choices = ["hi", "bye"], required = true }]
cancellable = false
"#;

#[test]
fn a_good_file_loads() {
    let dir = scratch("good");
    let loaded = load(&write(&dir, GOOD), &Overrides::default()).unwrap();
    assert_eq!(loaded.config.device_id.as_str(), "boiler-1");
    assert_eq!(loaded.config.secret.as_deref(), Some("s3cret"));
    assert_eq!(loaded.config.kind, "gateway");
    assert_eq!(loaded.config.firmware, "2.0");
    assert_eq!(loaded.config.heartbeat, Duration::from_secs(2));
    assert_eq!(loaded.config.telemetry, None);
    assert_eq!(loaded.config.server_accounts, ["tether-server"]);
    assert!(loaded.actions.handles("say"));
    assert_eq!(loaded.actions.commands()[0].args[0].name, "word");
    assert_eq!(
        loaded.machine.unwrap().get("enabled").unwrap().as_bool(),
        Some(false)
    );
}

#[test]
fn a_clusters_nodes_are_a_list_or_one_text() {
    let dir = scratch("cluster");
    let listed = GOOD.replace(
        r#"amqp_url = "amqp://broker.lan:5672/%2f""#,
        r#"amqp_url = ["amqp://n1:5681/%2f", "amqp://n2:5682/%2f"]"#,
    );
    let loaded = load(&write(&dir, &listed), &Overrides::default()).unwrap();
    assert_eq!(
        loaded.config.amqp_url,
        "amqp://n1:5681/%2f,amqp://n2:5682/%2f"
    );
    let joined = GOOD.replace(
        r#"amqp_url = "amqp://broker.lan:5672/%2f""#,
        r#"amqp_url = "amqp://n1:5681/%2f, amqp://n2:5682/%2f""#,
    );
    let loaded = load(&write(&dir, &joined), &Overrides::default()).unwrap();
    loaded.config.check().unwrap();
    // A bad one is reported at its line, naming which.
    let bad = GOOD.replace(
        r#"amqp_url = "amqp://broker.lan:5672/%2f""#,
        r#"amqp_url = ["amqp://n1:5681/%2f", "http://n2"]"#,
    );
    let problems = format!(
        "{:#}",
        load(&write(&dir, &bad), &Overrides::default()).unwrap_err()
    );
    assert!(problems.contains("broker URL 2 of 2"), "{problems}");
    assert!(problems.contains("agent.toml:1:"), "{problems}");
}

#[test]
fn the_example_file_parses() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/agent.example.toml"))
        .unwrap();
    // Its secret file and systemctl need not exist here: only file-system mistakes.
    let problems = agent::config_file::parse(&text, Path::new("/"), &Overrides::default())
        .err()
        .unwrap_or_default();
    for problem in problems {
        assert!(
            problem.message.contains("secret_file") || problem.message.contains("systemctl"),
            "{problem:?}"
        );
    }
}

#[test]
fn every_mistake_is_reported_with_its_line() {
    let dir = scratch("mistakes");
    let text = r#"amqp_url = "amqp://broker.lan:5672/%2f"
device_id = "bad/id"
secret_file = "secret"
heartbeat_ms = 5
telemetry_fastest_ms = 1

[[actions]]
name = "say"
program = "echo"
argv = ["{nope}"]
timeout_ms = 99999999

[[actions]]
name = "say"
program = "/bin/echo"
"#;
    let problems = load(&write(&dir, text), &Overrides::default()).unwrap_err();
    let shown = problems.to_string();
    let path = dir.join("agent.toml");
    for (line, fragment) in [
        (2, "device_id \"bad/id\""),
        (4, "heartbeat_ms is 5"),
        (5, "telemetry_fastest_ms is 1"),
        // An action's mistakes are placed at its `[[actions]]` header.
        (7, "must be an absolute path"),
        (7, "{nope}, which is not a declared argument"),
        (7, "timeout_ms is 99999999"),
        (13, "another action (line 7) has the same name"),
    ] {
        let expected = format!("{}:{line}:", path.display());
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with(&expected) && l.contains(fragment)),
            "no {fragment:?} at line {line} in:\n{shown}"
        );
    }
}

#[test]
fn an_unknown_key_is_a_mistake_with_its_place() {
    let dir = scratch("unknown");
    let text = "device_id = \"d-1\"\nsecret_file = \"secret\"\nheartbeat = 5\n";
    let problems = load(&write(&dir, text), &Overrides::default()).unwrap_err();
    assert_eq!(problems.problems.len(), 1);
    let problem = &problems.problems[0];
    assert_eq!(problem.at, Some((3, 1)), "{problem:?}");
    assert!(problem.message.contains("heartbeat"), "{problem:?}");

    let text = "device_id = \"d-1\"\nsecret_file = \"secret\"\n\n[[actions]]\nname = \"x\"\nprogram = \"/bin/true\"\nshell = true\n";
    let problems = load(&write(&dir, text), &Overrides::default()).unwrap_err();
    assert!(problems.to_string().contains(":7:"), "{problems}");
}

#[test]
fn flags_win_over_the_file() {
    let dir = scratch("overrides");
    let overrides = Overrides {
        device_id: Some("boiler-2".into()),
        secret: Some("from-env".into()),
        heartbeat_ms: Some(1000),
        kind: Some("pump".into()),
        ..Overrides::default()
    };
    let loaded = load(&write(&dir, GOOD), &overrides).unwrap();
    assert_eq!(loaded.config.device_id.as_str(), "boiler-2");
    assert_eq!(loaded.config.secret.as_deref(), Some("from-env"));
    assert_eq!(loaded.config.heartbeat, Duration::from_secs(1));
    assert_eq!(loaded.config.kind, "pump");
    assert_eq!(loaded.config.firmware, "2.0", "the file's, not overridden");
}

#[test]
fn a_secret_file_others_can_read_is_refused() {
    let dir = scratch("readable");
    let path = write(&dir, GOOD);
    std::fs::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let problems = load(&path, &Overrides::default()).unwrap_err().to_string();
    assert!(
        problems.contains(":3:") && problems.contains("accessible by other users"),
        "{problems}"
    );
    assert!(problems.contains("chmod 600"), "{problems}");
    assert!(!problems.contains("s3cret"));
}

fn check_config(path: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tether-agent"))
        .args(["--check-config", "--config"])
        .arg(path)
        .env_remove("TETHER_DEVICE_SECRET")
        .env_remove("TETHER_AMQP_URL")
        .env_remove("TETHER_DEVICE_ID")
        .env("TETHER_AMQP_URL", "amqp://127.0.0.1:1/%2f")
        .output()
        .unwrap()
}

#[test]
fn check_config_exits_by_whether_the_file_is_right() {
    let dir = scratch("check");
    let good = write(&dir, GOOD);
    let output = check_config(&good);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        stdout.contains("ok") && stdout.contains("boiler-1"),
        "{stdout}"
    );
    // The flag's URL (from the environment) won, and nothing connected to it.
    assert!(stdout.contains("127.0.0.1:1"), "{stdout}");

    let bad = write(
        &dir,
        &GOOD.replace("heartbeat_ms = 2000", "heartbeat_ms = 1"),
    );
    let output = check_config(&bad);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        stderr.contains("agent.toml:6:") && stderr.contains("heartbeat_ms"),
        "{stderr}"
    );
}

#[test]
fn check_config_refuses_capabilities_servers_would_drop() {
    let dir = scratch("capabilities");
    // 256 actions and the built-in `diagnostics`: each action is right on its own, but
    // servers drop a hello of 257 commands, which would leave the device offline for good.
    let mut many = GOOD.to_owned();
    for n in 0..255 {
        many.push_str(&format!(
            "\n[[actions]]\nname = \"say{n}\"\nprogram = \"/bin/echo\"\n"
        ));
    }
    let output = check_config(&write(&dir, &many));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        stderr.contains("servers would refuse the capabilities")
            && stderr.contains("257 commands announced; at most 256 are accepted"),
        "{stderr}"
    );

    // An argument servers would refuse is caught with the action, by line.
    let choices: Vec<String> = (0..300).map(|i| format!("\"c{i}\"")).collect();
    let wide = GOOD.replace(
        r#"choices = ["hi", "bye"]"#,
        &format!("choices = [{}]", choices.join(", ")),
    );
    let output = check_config(&write(&dir, &wide));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        stderr.contains("action \"say\"")
            && stderr.contains("has 300 choices; at most 256 are accepted"),
        "{stderr}"
    );
}

#[test]
fn the_machine_table_is_checked_and_its_metrics_announced() {
    let dir = scratch("machine");
    let wrong = write(
        &dir,
        &GOOD.replace("enabled = false", "enabled = true\nmounts = \"/\""),
    );
    let output = check_config(&wrong);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stderr.contains("[machine]"), "{stderr}");

    // Turned on, the machine's own metrics are the device's, beside its actions.
    let on = GOOD.replace("enabled = false", "enabled = true\ntemperature = false");
    let loaded = load(&write(&dir, &on), &Overrides::default()).unwrap();
    let readings = agent::real::readings_from(loaded.machine.as_ref()).unwrap();
    let device = agent::real::RealDevice::new(loaded.actions, readings);
    let capabilities = agent::Handler::capabilities(&device);
    let metrics: Vec<&str> = capabilities
        .metrics
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert!(
        metrics.contains(&"cpu") && metrics.contains(&"uptime"),
        "{metrics:?}"
    );
    assert_eq!(capabilities.commands[0].name, "say");
}
