//! Actions run real programs: directly, never through a shell, with their whole process
//! group killed on timeout and cancel, their output bounded, and their progress paced.

mod support;

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent::{
    Command,
    actions::{ActionSpec, Actions},
    real::RealDevice,
};
use protocol::{ArgKind, ArgSpec, CommandId, CommandRequest, Outcome, ServerMessage};
use serde_json::{Value, json};
use support::{TestBroker, answers_until_replied, hello, progress_and_outcome, to_inbox};

/// A fresh directory of the test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-actions-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An executable sh script in `dir`.
fn script(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("action.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn text_arg(name: &str) -> ArgSpec {
    ArgSpec {
        name: name.into(),
        description: String::new(),
        kind: ArgKind::String { max_len: None },
        required: false,
        default: None,
    }
}

fn action(program: PathBuf, argv: &[&str]) -> ActionSpec {
    ActionSpec {
        name: "act".into(),
        description: "an action".into(),
        args: vec![text_arg("msg")],
        program,
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        cwd: None,
        env: BTreeMap::new(),
        timeout_ms: 10_000,
        max_output_bytes: 64 * 1024,
        cancellable: true,
    }
}

fn command(args: Value) -> Command {
    Command {
        id: CommandId::from("c-1"),
        name: "act".into(),
        args: serde_json::from_value(args).unwrap(),
        timeout: Duration::from_secs(30),
    }
}

/// Runs `spec` with `args`, collecting progress messages with when they came.
async fn run(
    spec: ActionSpec,
    args: Value,
) -> (Result<Value, agent::CommandError>, Vec<(Instant, String)>) {
    let actions = Actions::new(vec![spec]).expect("a valid action");
    let messages = Arc::new(Mutex::new(Vec::new()));
    let sink = messages.clone();
    let result = actions
        .run_with(&command(args), move |message| {
            sink.lock().unwrap().push((Instant::now(), message));
            async {}
        })
        .await;
    let messages = messages.lock().unwrap().clone();
    (result, messages)
}

/// Whether process `pid` is gone (or a zombie about to be reaped), waiting up to 3 s.
async fn gone(pid: &str) -> bool {
    for _ in 0..60 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z') =>
            {
                return true;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    false
}

async fn read_pid(path: &Path) -> String {
    for _ in 0..100 {
        if let Ok(pid) = std::fs::read_to_string(path)
            && !pid.trim().is_empty()
        {
            return pid.trim().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the script never wrote {}", path.display());
}

#[tokio::test]
async fn an_argument_is_one_literal_element_never_shell_code() {
    let dir = scratch("inject");
    let canary = dir.join("canary");
    let program = script(&dir, r#"echo "$#"; for a in "$@"; do echo "[$a]"; done"#);
    let evil = format!(
        "; rm -rf /tmp/x; touch {0} $(touch {0}) `touch {0}` && touch {0} | touch {0}",
        canary.display()
    );
    let (result, _) = run(
        action(program, &["{msg}", "--name={msg}", "{{msg}}"]),
        json!({ "msg": evil }),
    )
    .await;
    let result = result.expect("the script succeeds");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(
        result["output"].as_str().unwrap(),
        format!("3\n[{evil}]\n[--name={evil}]\n[{{msg}}]\n")
    );
    assert!(!canary.exists(), "nothing but the script ran");

    // Straight to /bin/echo, too: the value is its one argument.
    let (result, _) = run(
        action("/bin/echo".into(), &["{msg}"]),
        json!({ "msg": evil }),
    )
    .await;
    assert_eq!(result.unwrap()["output"], format!("{evil}\n"));
    assert!(!canary.exists());
}

#[tokio::test]
async fn the_environment_is_clean_and_the_cwd_is_set() {
    let dir = scratch("env");
    let program = script(&dir, "pwd; env | sort");
    let mut spec = action(program, &[]);
    spec.cwd = Some(dir.clone());
    spec.env.insert("COLOUR".into(), "blue".into());
    let (result, _) = run(spec, json!({})).await;
    let output = result.unwrap()["output"].as_str().unwrap().to_owned();
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], dir.canonicalize().unwrap().to_str().unwrap());
    assert!(lines.contains(&"COLOUR=blue"), "{output}");
    assert!(
        lines.contains(&"PATH=/usr/sbin:/usr/bin:/sbin:/bin"),
        "{output}"
    );
    assert!(lines.contains(&"LANG=C.UTF-8"), "{output}");
    assert!(!output.contains("HOME="), "{output}");
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let dir = scratch("timeout");
    let pidfile = dir.join("pid");
    let program = script(
        &dir,
        &format!("sleep 100 & echo $! > {}; wait", pidfile.display()),
    );
    let mut spec = action(program, &[]);
    spec.timeout_ms = 500;
    let started = Instant::now();
    let (result, _) = run(spec, json!({})).await;
    let error = result.unwrap_err();
    assert!(
        error.message.contains("timed out after 500 ms"),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid = read_pid(&pidfile).await;
    assert!(
        gone(&pid).await,
        "the background sleep {pid} was killed too"
    );
}

#[tokio::test]
async fn the_commands_own_deadline_bounds_it_too() {
    let dir = scratch("deadline");
    let program = script(&dir, "sleep 100");
    let actions = Actions::new(vec![action(program, &[])]).unwrap();
    let mut command = command(json!({}));
    command.timeout = Duration::from_millis(300);
    let error = actions.run_with(&command, |_| async {}).await.unwrap_err();
    assert!(
        error.message.contains("timed out after 300 ms"),
        "{error:?}"
    );
}

#[tokio::test]
async fn output_beyond_the_limit_is_cut_and_said_to_be() {
    let dir = scratch("truncate");
    let program = script(&dir, "head -c 100000 /dev/zero | tr '\\0' x");
    let mut spec = action(program, &[]);
    spec.max_output_bytes = 100;
    let (result, messages) = run(spec, json!({})).await;
    let result = result.unwrap();
    assert_eq!(result["truncated"], true);
    assert_eq!(result["output"].as_str().unwrap(), "x".repeat(100));
    let streamed: usize = messages.iter().map(|(_, m)| m.len()).sum();
    assert!(streamed <= 100, "progress carried {streamed} bytes");

    // The reply carries the last 4 KiB of what was kept.
    let program = script(&dir, "seq 1 5000");
    let (result, _) = run(action(program, &[]), json!({})).await;
    let result = result.unwrap();
    let output = result["output"].as_str().unwrap();
    assert!(output.len() <= 4096);
    assert!(output.ends_with("\n5000\n"), "{output}");
    assert_eq!(result["truncated"], false);
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_its_code_and_output() {
    let dir = scratch("exit");
    let program = script(&dir, "echo broken >&2; exit 3");
    let (result, _) = run(action(program, &[]), json!({})).await;
    let error = result.unwrap_err();
    assert_eq!(error.code, protocol::ErrorCode::Failed);
    assert!(error.message.contains("exited with code 3"), "{error:?}");
    assert!(error.message.contains("broken"), "{error:?}");
}

#[tokio::test]
async fn cancelling_drops_the_future_and_kills_the_group() {
    let dir = scratch("cancel");
    let pidfile = dir.join("pid");
    let program = script(
        &dir,
        &format!("sleep 100 & echo $! > {}; wait", pidfile.display()),
    );
    let actions = Actions::new(vec![action(program, &[])]).unwrap();
    let task =
        tokio::spawn(async move { actions.run_with(&command(json!({})), |_| async {}).await });
    let pid = read_pid(&pidfile).await;
    task.abort();
    assert!(gone(&pid).await, "the background sleep {pid} was killed");
}

#[tokio::test]
async fn a_non_cancellable_action_runs_on_when_cancelled() {
    let dir = scratch("detached");
    let done = dir.join("done");
    let program = script(&dir, &format!("sleep 1; touch {}", done.display()));
    let mut spec = action(program, &[]);
    spec.cancellable = false;
    let actions = Actions::new(vec![spec]).unwrap();
    let task =
        tokio::spawn(async move { actions.run_with(&command(json!({})), |_| async {}).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    task.abort();
    for _ in 0..60 {
        if done.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the non-cancellable action was stopped");
}

#[tokio::test]
async fn progress_is_paced_and_each_message_bounded() {
    let dir = scratch("pace");
    let program = script(
        &dir,
        "i=0; while [ $i -lt 150 ]; do echo \"line $i $(head -c 30 /dev/zero | tr '\\0' y)\"; i=$((i+1)); sleep 0.01; done",
    );
    let started = Instant::now();
    let (result, messages) = run(action(program, &[]), json!({})).await;
    let elapsed = started.elapsed();
    result.unwrap();
    assert!(!messages.is_empty());
    let allowed = (elapsed.as_secs_f64() * 4.0).ceil() as usize + 2;
    assert!(
        messages.len() <= allowed,
        "{} messages in {elapsed:?}",
        messages.len()
    );
    assert!(messages.len() < 150, "lines are coalesced");
    for pair in messages.windows(2).take(messages.len().saturating_sub(2)) {
        assert!(pair[1].0 - pair[0].0 >= Duration::from_millis(200), "paced");
    }
    for (_, message) in &messages {
        assert!(message.len() <= 1024);
    }
    assert!(messages.last().unwrap().1.contains("line 149"));

    // One huge line is cut to 1 KiB.
    let program = script(&dir, "head -c 50000 /dev/zero | tr '\\0' z");
    let (_, messages) = run(action(program, &[]), json!({})).await;
    assert!(messages.iter().all(|(_, m)| m.len() <= 1024));
}

#[test]
fn mistakes_in_actions_are_all_reported() {
    let mut bad = action("bin/echo".into(), &["{nope}", "{open"]);
    bad.timeout_ms = 0;
    bad.max_output_bytes = 0;
    bad.cwd = Some("/no/such/dir".into());
    let mut missing = action("/no/such/program".into(), &[]);
    missing.name = "other".into();
    let twin = action("/bin/echo".into(), &[]);
    let errors = Actions::new(vec![bad, missing, twin]).unwrap_err();
    let all = errors.join("\n");
    for expected in [
        "{nope}, which is not a declared argument",
        "unclosed `{`",
        "must be an absolute path",
        "timeout_ms is 0",
        "max_output_bytes is 0",
        "cwd /no/such/dir is not an existing directory",
        "program /no/such/program cannot be used",
        "another action has the same name",
    ] {
        assert!(all.contains(expected), "{expected:?} not in:\n{all}");
    }
    // Not executable.
    let dir = scratch("noexec");
    let path = dir.join("plain");
    std::fs::write(&path, "").unwrap();
    let errors = Actions::new(vec![action(path, &[])]).unwrap_err();
    assert!(
        errors.join("\n").contains("is not executable"),
        "{errors:?}"
    );
}

#[tokio::test]
async fn an_action_runs_end_to_end_through_the_broker() {
    let broker = TestBroker::start(support::Devices::new(&[("dev-a", "secret-a")])).await;
    let server = broker.server().await;
    server.declare_topology().await;
    let mut presence = server.presence_of("dev-a").await;
    let (replies_queue, mut replies) = server.private_queue().await;

    let dir = scratch("e2e");
    let program = script(&dir, r#"for a in "$@"; do echo "[$a]"; sleep 0.3; done"#);
    let actions = Actions::new(vec![action(program, &["{msg}", "second"])]).unwrap();
    let device = RealDevice::new(actions, Vec::new());
    let config = broker.agent_config("dev-a", "secret-a", "gateway");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let _agent = tokio::spawn(agent::run(config, Arc::new(device), async move {
        let _ = stopped.await;
    }));

    let (hello, _) = hello(&mut presence).await;
    // The action, and the built-in diagnostics every real device announces.
    assert_eq!(hello.capabilities.commands.len(), 2);
    assert_eq!(hello.capabilities.commands[0].name, "act");
    assert_eq!(hello.capabilities.commands[1].name, "diagnostics");
    let request = ServerMessage::Command(CommandRequest {
        command_id: CommandId::from("e2e-1"),
        name: "act".into(),
        args: [("msg".to_owned(), json!("; touch /tmp/tether-e2e-canary"))].into(),
        timeout_ms: 10_000,
        deadline_ms: None,
    });
    to_inbox(&server, &hello.inbox, &replies_queue, "e2e-1", &request).await;
    let (progress, result) =
        progress_and_outcome(answers_until_replied(&mut replies, "dev-a", &["e2e-1"]).await);
    match result {
        Outcome::Ok { result } => {
            assert_eq!(result["exit_code"], 0);
            assert_eq!(
                result["output"],
                "[; touch /tmp/tether-e2e-canary]\n[second]\n"
            );
        }
        other => panic!("not a success: {other:?}"),
    }
    assert!(
        progress
            .iter()
            .any(|p| p.contains("[; touch /tmp/tether-e2e-canary]")),
        "{progress:?}"
    );
    assert!(!Path::new("/tmp/tether-e2e-canary").exists());
    let _ = stop.send(());
}
