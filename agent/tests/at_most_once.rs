//! A command that arrives again is never carried out twice: answered from what the agent
//! remembers (its outcome), or, while it still runs, answered once when it ends.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use agent::{Command, CommandContext, CommandError, Handler};
use protocol::{
    Capabilities, CommandId, CommandRequest, CommandSpec, DeviceMessage, Outcome, ServerMessage,
};
use serde_json::{Value, json};
use support::{TestBroker, answers_until_replied, hello, next_within, to_inbox};

/// A device whose one command counts how often it was carried out; it takes `delay_ms`.
#[derive(Default)]
struct Counter {
    runs: AtomicU32,
}

impl Handler for Counter {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            commands: vec![CommandSpec {
                name: "count".into(),
                description: "counts its runs".into(),
                args: Vec::new(),
            }],
            metrics: Vec::new(),
            reporting: None,
        }
    }

    async fn handle(&self, _: Command, _: CommandContext) -> Result<Value, CommandError> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(json!({ "run": run }))
    }
}

fn count(id: &str) -> ServerMessage {
    ServerMessage::Command(CommandRequest {
        command_id: CommandId::from(id),
        name: "count".into(),
        args: Default::default(),
        timeout_ms: 10_000,
        deadline_ms: None,
    })
}

fn outcome(answers: &[(String, DeviceMessage)], id: &str) -> Vec<Outcome> {
    answers
        .iter()
        .filter_map(|(answered, message)| match message {
            DeviceMessage::Reply(reply) if answered == id => Some(reply.outcome.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_command_that_comes_again_is_not_carried_out_again() {
    let broker = TestBroker::start(support::Devices::new(&[("dev-once", "secret")])).await;
    let server = broker.server().await;
    server.declare_topology().await;
    let mut presence = server.presence_of("dev-once").await;
    let (replies_queue, mut replies) = server.private_queue().await;
    let device = Arc::new(Counter::default());
    let config = broker.agent_config("dev-once", "secret", "counter");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(agent::run(config, device.clone(), async move {
        let _ = stopped.await;
    }));
    let (hello, _) = hello(&mut presence).await;

    // Twice while it runs: one run, one reply.
    to_inbox(&server, &hello.inbox, &replies_queue, "c-1", &count("c-1")).await;
    to_inbox(&server, &hello.inbox, &replies_queue, "c-1", &count("c-1")).await;
    let answers = answers_until_replied(&mut replies, "dev-once", &["c-1"]).await;
    let first = json!({ "run": 1 });
    assert_eq!(
        outcome(&answers, "c-1"),
        [Outcome::Ok {
            result: first.clone()
        }]
    );
    // Nothing more comes for it: no second reply.
    let late = next_within(&mut replies, Duration::from_millis(800)).await;
    if let Some(late) = late {
        let message: DeviceMessage = protocol::decode(&late.data).unwrap();
        assert!(
            !matches!(message, DeviceMessage::Reply(_)),
            "a second reply: {message:?}"
        );
    }

    // Again after it ended: the same outcome, not a second run.
    to_inbox(&server, &hello.inbox, &replies_queue, "c-1", &count("c-1")).await;
    let answers = answers_until_replied(&mut replies, "dev-once", &["c-1"]).await;
    assert_eq!(outcome(&answers, "c-1"), [Outcome::Ok { result: first }]);

    // Another command runs as ever.
    to_inbox(&server, &hello.inbox, &replies_queue, "c-2", &count("c-2")).await;
    let answers = answers_until_replied(&mut replies, "dev-once", &["c-2"]).await;
    assert_eq!(
        outcome(&answers, "c-2"),
        [Outcome::Ok {
            result: json!({ "run": 2 })
        }]
    );
    assert_eq!(device.runs.load(Ordering::SeqCst), 2);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
}
