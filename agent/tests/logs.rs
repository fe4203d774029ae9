//! The built-in `logs` and `diagnostics` commands, on real files and processes.

mod support;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent::{
    Command, Handler as _,
    actions::Actions,
    config_file::{Overrides, parse},
    logs::{Logs, Source},
    real::RealDevice,
};
use protocol::{CommandId, CommandRequest, Outcome, ServerMessage};
use serde_json::{Value, json};
use support::{TestBroker, answers_until_replied, hello, progress_and_outcome, to_inbox};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-logs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn logs_of(path: &Path) -> Logs {
    Logs {
        sources: [("app".to_owned(), Source::File(path.to_owned()))].into(),
        ..Logs::default()
    }
}

/// The command as the session hands it over: validated against the announced spec.
fn command(logs: &Logs, args: Value) -> Result<Command, String> {
    let spec = logs.command().expect("announced");
    let args: BTreeMap<String, Value> = serde_json::from_value(args).unwrap();
    let args = spec.validate(&args).map_err(|error| error.to_string())?;
    Ok(Command {
        id: CommandId::from("l-1"),
        name: "logs".into(),
        args,
        timeout: Duration::from_secs(60),
    })
}

type Messages = Arc<Mutex<Vec<String>>>;

async fn run(logs: &Logs, args: Value) -> (Value, Vec<String>) {
    let messages: Messages = Arc::default();
    let command = command(logs, args).unwrap();
    let sink = messages.clone();
    let reply = logs
        .run_with(&command, move |message| {
            sink.lock().unwrap().push(message);
            async {}
        })
        .await
        .expect("a reply");
    let messages = messages.lock().unwrap().clone();
    (reply, messages)
}

fn lines_of(messages: &[String]) -> Vec<String> {
    messages
        .iter()
        .flat_map(|message| message.lines().map(str::to_owned))
        .collect()
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

#[tokio::test]
async fn the_last_lines_of_a_large_file_are_read_from_its_end() {
    let dir = scratch("large");
    let path = dir.join("big.log");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let filler = "x".repeat(99);
        let mut written = 0;
        let mut n = 0;
        while written < 50 * 1024 * 1024 {
            writeln!(file, "{n:08} {filler}").unwrap();
            written += 109;
            n += 1;
        }
        for tail in 0..30 {
            writeln!(file, "tail line {tail}").unwrap();
        }
        file.write_all(b"last without newline").unwrap();
    }
    let (reply, messages) = run(&logs_of(&path), json!({"source": "app", "lines": 20})).await;
    let lines = lines_of(&messages);
    let expected: Vec<String> = (11..30)
        .map(|n| format!("tail line {n}"))
        .chain(["last without newline".to_owned()])
        .collect();
    assert_eq!(lines, expected);
    assert_eq!(reply["lines"], 20);
    assert_eq!(reply["truncated"], false);
    assert_eq!(reply["source"], "app");
    assert_eq!(reply["output"], expected.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_filter_keeps_matching_lines_ignoring_case() {
    let dir = scratch("filter");
    let path = dir.join("app.log");
    let mut text = String::new();
    for n in 0..200 {
        let level = if n % 10 == 0 { "ERROR" } else { "info" };
        text.push_str(&format!("{n} {level} something\n"));
    }
    text.push_str("a.c literal\nabc not literal\n");
    std::fs::write(&path, text).unwrap();
    let logs = logs_of(&path);
    let (reply, messages) = run(
        &logs,
        json!({"source": "app", "lines": 3, "filter": "error"}),
    )
    .await;
    assert_eq!(
        lines_of(&messages),
        [
            "170 ERROR something",
            "180 ERROR something",
            "190 ERROR something"
        ]
    );
    assert_eq!(reply["lines"], 3);
    let (_, messages) = run(&logs, json!({"source": "app", "filter": "A.C"})).await;
    assert_eq!(
        lines_of(&messages),
        ["a.c literal"],
        "a substring, not a pattern"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn only_configured_names_are_accepted() {
    let logs = logs_of(Path::new("/var/log/app.log"));
    let spec = logs.command().unwrap();
    assert_eq!(spec.name, "logs");
    for bad in [
        json!({"source": "/etc/shadow"}),
        json!({"source": "../app"}),
        json!({}),
        json!({"source": "app", "path": "/etc/shadow"}),
        json!({"source": "app", "lines": 501}),
        json!({"source": "app", "follow": true, "follow_s": 61}),
    ] {
        assert!(command(&logs, bad.clone()).is_err(), "{bad} was accepted");
    }
    assert!(command(&logs, json!({"source": "app"})).is_ok());
    assert!(
        Logs::default().command().is_none(),
        "no sources, no command"
    );

    let base = Path::new("/");
    let good = "device_id = \"d\"\nsecret = \"s\"\n";
    let loaded = parse(
        &format!("{good}[logs]\nmax_lines = 50\n[logs.sources]\nsys = {{ file = \"/var/log/syslog\" }}\nweb = {{ unit = \"nginx.service\" }}\n"),
        base,
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(loaded.logs.max_lines, 50);
    assert_eq!(
        loaded.logs.sources["web"],
        Source::Unit("nginx.service".into())
    );
    let problems = parse(
        &format!("{good}[logs]\nmax_lines = 9000\nfollow_max_s = 0\n[logs.sources]\nrel = {{ file = \"var/log/x\" }}\nboth = {{ file = \"/a\", unit = \"b\" }}\nopt = {{ unit = \"--all\" }}\n"),
        base,
        &Overrides::default(),
    )
    .unwrap_err();
    let text: Vec<String> = problems
        .iter()
        .map(|p| format!("{:?} {}", p.at, p.message))
        .collect();
    assert_eq!(problems.len(), 5, "{text:#?}");
    assert!(problems.iter().all(|p| p.at.is_some()), "{text:#?}");
    assert!(
        text.iter()
            .any(|t| t.contains("Some((4, 13)) logs.max_lines")),
        "{text:#?}"
    );
    let unknown = parse(
        &format!("{good}[logs.sources]\nx = {{ path = \"/a\" }}\n"),
        base,
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(unknown[0].at.is_some(), "{unknown:?}");
    let clash = parse(
        &format!("{good}[[actions]]\nname = \"logs\"\nprogram = \"/bin/true\"\n"),
        base,
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(clash[0].message.contains("built-in"), "{clash:?}");
}

#[tokio::test]
async fn lines_go_out_in_bounded_paced_chunks() {
    let dir = scratch("chunks");
    let path = dir.join("app.log");
    let mut text = String::new();
    for n in 0..300 {
        text.push_str(&format!("line {n:04} {}\n", "y".repeat(40)));
    }
    text.push_str(&"z".repeat(5000));
    text.push('\n');
    std::fs::write(&path, &text).unwrap();
    let started = Instant::now();
    let (reply, messages) = run(&logs_of(&path), json!({"source": "app", "lines": 301})).await;
    let took = started.elapsed();
    assert!(
        messages.iter().all(|m| m.len() <= 1024),
        "a message over 1 KiB"
    );
    // 300 lines of 50 bytes and one cut line: about 16 KiB, so about 17 messages.
    assert!((15..=25).contains(&messages.len()), "{}", messages.len());
    assert!(took >= Duration::from_millis(250) * (messages.len() as u32 - 1));
    assert_eq!(reply["lines"], 301);
    assert_eq!(reply["truncated"], true, "the long line was cut");
    assert!(reply.get("output").is_none(), "too large for the reply");
    assert!(lines_of(&messages).last().unwrap().ends_with("[…]"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn follow_sends_appended_lines_until_its_time_is_up() {
    let dir = scratch("follow");
    let path = dir.join("app.log");
    std::fs::write(&path, "old 1\nold 2\n").unwrap();
    let writer = {
        let path = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            append(&path, "new 1\nnew ");
            tokio::time::sleep(Duration::from_millis(600)).await;
            append(&path, "2\n");
        })
    };
    let started = Instant::now();
    let (reply, messages) = run(
        &logs_of(&path),
        json!({"source": "app", "lines": 1, "follow": true, "follow_s": 3}),
    )
    .await;
    let took = started.elapsed();
    writer.await.unwrap();
    assert_eq!(lines_of(&messages), ["old 2", "new 1", "new 2"]);
    assert_eq!(reply["lines"], 3);
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn follow_survives_rotation_and_truncation() {
    let dir = scratch("rotate");
    let path = dir.join("app.log");
    std::fs::write(&path, "start\n").unwrap();
    let writer = {
        let path = path.clone();
        let dir = dir.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            append(&path, "before rotation\n");
            std::fs::rename(&path, dir.join("app.log.1")).unwrap();
            append(&dir.join("app.log.1"), "late in the old file\n");
            tokio::time::sleep(Duration::from_millis(700)).await;
            append(&path, "in the new file\n");
            tokio::time::sleep(Duration::from_millis(1200)).await;
            std::fs::write(&path, "").unwrap();
            tokio::time::sleep(Duration::from_millis(700)).await;
            append(&path, "after truncation\n");
        })
    };
    let (_, messages) = run(
        &logs_of(&path),
        json!({"source": "app", "lines": 1, "follow": true, "follow_s": 5}),
    )
    .await;
    writer.await.unwrap();
    assert_eq!(
        lines_of(&messages),
        [
            "start",
            "before rotation",
            "late in the old file",
            "in the new file",
            "after truncation"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn dropping_the_future_stops_following() {
    let dir = scratch("cancel");
    let path = dir.join("app.log");
    std::fs::write(&path, "start\n").unwrap();
    let logs = logs_of(&path);
    let command = command(
        &logs,
        json!({"source": "app", "follow": true, "follow_s": 60}),
    )
    .unwrap();
    let messages: Messages = Arc::default();
    let sink = messages.clone();
    let run = logs.run_with(&command, move |message| {
        sink.lock().unwrap().push(message);
        async {}
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(1200), run)
            .await
            .is_err()
    );
    assert_eq!(lines_of(&messages.lock().unwrap()), ["start"]);
    append(&path, "after the cancel\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(lines_of(&messages.lock().unwrap()), ["start"]);
    let _ = std::fs::remove_dir_all(&dir);
}

const SECRET: &str = "k3ep-this-Secret-9f1b";

#[tokio::test]
async fn diagnostics_report_the_device_without_its_secrets() {
    let dir = scratch("diag");
    let agent_log = dir.join("agent.log");
    std::fs::write(&agent_log, "agent started\nagent connected\n").unwrap();
    let text = format!(
        "amqp_url = \"amqp://dev-a:{SECRET}@broker.lan/%2f\"\ndevice_id = \"dev-a\"\nsecret = \"{SECRET}\"\n\
         [logs.sources]\nagent = {{ file = \"{}\" }}\n\
         [[actions]]\nname = \"act\"\nprogram = \"/bin/true\"\nenv = {{ TOKEN = \"{SECRET}\" }}\n",
        agent_log.display()
    );
    let loaded = parse(&text, &dir, &Overrides::default()).unwrap();
    let device = RealDevice::configured(&loaded, Vec::new());
    let names: Vec<String> = device
        .capabilities()
        .commands
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["act", "logs", "diagnostics"]);
    let diagnostics = agent::diagnostics::Diagnostics {
        config: Some(loaded.redacted()),
        logs: Some(Arc::new(loaded.logs.clone())),
    };
    let report = diagnostics.report().await;
    let json = report.to_string();
    assert!(!json.contains(SECRET), "{json}");
    assert!(json.len() <= agent::diagnostics::MAX_REPORT_BYTES);
    for section in [
        "os",
        "kernel",
        "hostname",
        "agent_version",
        "uptime_s",
        "config",
        "disks",
        "network",
        "time_sync",
        "agent_log",
    ] {
        assert!(report.get(section).is_some(), "no {section}: {json}");
    }
    assert_eq!(report["config"]["secret"], "***");
    assert_eq!(
        report["config"]["amqp_url"],
        "amqp://dev-a:***@broker.lan/%2f"
    );
    assert_eq!(
        report["agent_log"],
        json!(["agent started", "agent connected"])
    );
    assert_eq!(report["kernel"]["arch"], std::env::consts::ARCH);
    assert!(
        report["network"].as_array().is_some_and(|n| !n.is_empty()),
        "{json}"
    );

    let bare = RealDevice::new(Actions::default(), Vec::new());
    let names: Vec<String> = bare
        .capabilities()
        .commands
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        names,
        ["diagnostics"],
        "logs is announced only with sources"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn logs_and_diagnostics_run_end_to_end_through_the_broker() {
    let broker = TestBroker::start(support::Devices::new(&[("dev-a", "secret-a")])).await;
    let server = broker.server().await;
    server.declare_topology().await;
    let mut presence = server.presence_of("dev-a").await;
    let (replies_queue, mut replies) = server.private_queue().await;

    let dir = scratch("e2e");
    let path = dir.join("app.log");
    std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
    let device = RealDevice::new(Actions::default(), Vec::new()).with_logs(logs_of(&path));
    let config = broker.agent_config("dev-a", "secret-a", "gateway");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let _agent = tokio::spawn(agent::run(config, Arc::new(device), async move {
        let _ = stopped.await;
    }));
    let (hello, _) = hello(&mut presence).await;
    let names: Vec<&str> = hello
        .capabilities
        .commands
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["logs", "diagnostics"]);

    for (id, name, args) in [
        ("e2e-logs", "logs", json!({"source": "app", "lines": 2})),
        ("e2e-diag", "diagnostics", json!({})),
        ("e2e-path", "logs", json!({"source": "/etc/passwd"})),
    ] {
        let request = ServerMessage::Command(CommandRequest {
            command_id: CommandId::from(id),
            name: name.into(),
            args: serde_json::from_value(args).unwrap(),
            timeout_ms: 10_000,
            deadline_ms: None,
        });
        to_inbox(&server, &hello.inbox, &replies_queue, id, &request).await;
        let (progress, outcome) =
            progress_and_outcome(answers_until_replied(&mut replies, "dev-a", &[id]).await);
        match (id, outcome) {
            ("e2e-logs", Outcome::Ok { result }) => {
                assert_eq!(result["output"], "two\nthree");
                assert_eq!(result["lines"], 2);
                assert_eq!(progress, ["two\nthree"]);
            }
            ("e2e-diag", Outcome::Ok { result }) => {
                assert_eq!(result["agent_version"], env!("CARGO_PKG_VERSION"));
                assert_eq!(result["agent_log"], "not configured");
            }
            ("e2e-path", Outcome::Ok { result }) => panic!("a path was read: {result}"),
            ("e2e-path", _) => {}
            (id, other) => panic!("{id}: {other:?}"),
        }
    }
    let _ = stop.send(());
    let _ = std::fs::remove_dir_all(&dir);
}
