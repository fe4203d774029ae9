//! Accounts and permissions as Tether's devices meet them: what a device may do, what it
//! is refused, and how. Included by `conformance_embedded.rs` and
//! `conformance_rabbitmq.rs`, which each provide a `crate::device()`: a broker with a
//! device account on it (RabbitMQ: a user made with `rabbitmqctl`, its permissions the
//! regexes equivalent to `protocol::policy`; the embedded broker: the test
//! authenticator's `dev-<n>`). The same cases must pass on both brokers, byte for byte;
//! the peers are raw clients (`raw.rs`) so that every answer is compared whole. The
//! server account is guest on both.
//!
//! What RabbitMQ 3.10 answers, and so what these cases expect:
//! - A refused action closes its channel with 403 ACCESS_REFUSED, `access to exchange
//!   '…' in vhost '/' refused for user '…'` (or `queue '…'`), blaming the method; a
//!   publish refused by its routing key says `access to topic '…' in exchange '…' in
//!   vhost '/' …`, a `user_id` not the user's own 406 PRECONDITION_FAILED, for every
//!   user (guest included).
//! - Passive declares are not checked; a declared server-named queue is checked under
//!   the name given to it; `amq.*` queue names cannot be chosen.
//! - A wrong password: 403 at login, then nothing. A user deleted while connected:
//!   connection.close 320 CONNECTION_FORCED `user '…' is deleted`.

use std::{net::SocketAddr, time::Duration};

use amq_protocol::{
    frame::AMQPFrame,
    protocol::{AMQPClass, BasicProperties, queue},
};
use protocol::names::{
    DISCOVER_EXCHANGE, EVENTS_EXCHANGE, PRESENCE_EXCHANGE, STORE_QUEUE, TELEMETRY_EXCHANGE,
};

use crate::doors::raw::{self, RawClient, describe};

/// A device account on a broker, made for one case and gone after it.
pub struct Device {
    pub addr: SocketAddr,
    pub user: String,
    pub password: String,
    /// Ends the account's access; dropping it removes whatever the account left behind.
    pub account: Box<dyn Revoke>,
}

/// Ends a device's access while it is connected.
pub trait Revoke: Send {
    /// RabbitMQ: `rabbitmqctl delete_user`; the embedded broker: `disconnect_user`.
    fn revoke(&self);
}

/// An attempt's frames on the channel it is given.
type Frames<'a> = Box<dyn Fn(u16) -> Vec<AMQPFrame> + 'a>;

/// Another device, which the device under test tries to speak for.
const OTHER: &str = "another-device";
/// A hang guard; a refused login takes 3 s to end, everything else far less.
const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_device_keeps_its_inbox_and_speaks_for_itself() {
    let device = crate::device().await;
    let me = device.user.as_str();
    // The server listens to the device's presence.
    let mut server = topology(device.addr).await;
    let presence = declared(&mut server, raw::queue_declare(1, "", true)).await;
    let listen = raw::queue_bind(1, &presence, PRESENCE_EXCHANGE, &format!("presence.{me}.*"));
    expect(&mut server, &[listen], "queue.bind-ok on 1").await;

    let mut client = RawClient::logged_in_as(device.addr, me, &device.password, 0).await;
    expect(&mut client, &[raw::channel_open(1)], "channel.open-ok on 1").await;
    // It may see that the exchanges are there (a passive declare asks no permission)…
    let passive = raw::exchange_declare(1, PRESENCE_EXCHANGE, "topic", true);
    expect(&mut client, &[passive], "exchange.declare-ok on 1").await;
    // …declare its server-named inbox, bind it to the announce requests, consume it…
    let inbox = declared(&mut client, raw::queue_declare(1, "", true)).await;
    assert!(inbox.starts_with("amq.gen-"), "{inbox}");
    let bind = raw::queue_bind(1, &inbox, DISCOVER_EXCHANGE, "");
    expect(&mut client, &[bind], "queue.bind-ok on 1").await;
    expect(
        &mut client,
        &[raw::basic_consume(1, &inbox)],
        "basic.consume-ok on 1",
    )
    .await;
    // …and say hello as itself, its user_id its own.
    expect(
        &mut client,
        &[raw::confirm_select(1)],
        "confirm.select-ok on 1",
    )
    .await;
    let hello = format!("presence.{me}.hello");
    let own = BasicProperties::default().with_user_id(me.into());
    let said = raw::message(1, PRESENCE_EXCHANGE, &hello, b"{}", own);
    expect(&mut client, &said, "basic.ack on 1").await;

    // The server hears it, from that user…
    server.send(&raw::basic_get(1, &presence)).await;
    let got = answer(&mut server).await;
    assert_eq!(
        got,
        format!("basic.get-ok on 1 {PRESENCE_EXCHANGE} {hello}")
    );
    let Some(AMQPFrame::Header(_, header)) = server.next_within(WITHIN).await else {
        panic!("no content header after get-ok");
    };
    let from = header.properties.user_id().as_ref().map(|u| u.to_string());
    assert_eq!(from.as_deref(), Some(me));
    let body = server.next_within(WITHIN).await;
    assert!(matches!(body, Some(AMQPFrame::Body(1, _))), "{body:?}");
    // …and its announce request reaches the device's inbox.
    let ask = raw::message(1, DISCOVER_EXCHANGE, "", b"{}", BasicProperties::default());
    for frame in &ask {
        server.send(frame).await;
    }
    let delivered = answer(&mut client).await;
    assert_eq!(
        delivered,
        format!("basic.deliver on 1 {DISCOVER_EXCHANGE} ")
    );
}

#[tokio::test]
async fn a_device_may_not_read_others_speak_for_them_or_change_the_topology() {
    let device = crate::device().await;
    let me = device.user.as_str();
    let _server = topology(device.addr).await;
    let mut client = RawClient::logged_in_as(device.addr, me, &device.password, 0).await;
    let refused = |kind: &str, name: &str, blamed: &str| {
        format!(
            "403 ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user \
             '{me}' {blamed}"
        )
    };
    let topic = |key: &str, exchange: &str| {
        format!(
            "403 ACCESS_REFUSED - access to topic '{key}' in exchange '{exchange}' in vhost \
             '/' refused for user '{me}' (60, 40)"
        )
    };
    let plain = BasicProperties::default;
    let hello = format!("presence.{OTHER}.hello");
    let reading = format!("telemetry.{OTHER}.temp");
    let cases: Vec<(&str, Frames, String)> = vec![
        (
            "hello as another device",
            Box::new(|n| raw::message(n, PRESENCE_EXCHANGE, &hello, b"{}", plain())),
            topic(&hello, PRESENCE_EXCHANGE),
        ),
        (
            "a reading as another device",
            Box::new(|n| raw::message(n, TELEMETRY_EXCHANGE, &reading, b"1", plain())),
            topic(&reading, TELEMETRY_EXCHANGE),
        ),
        (
            "reading presence through a binding",
            Box::new(|n| {
                vec![raw::queue_bind(
                    n,
                    "amq.gen-mine",
                    PRESENCE_EXCHANGE,
                    "presence.#",
                )]
            }),
            refused("exchange", PRESENCE_EXCHANGE, "(50, 20)"),
        ),
        (
            "consuming the readings' store",
            Box::new(|n| vec![raw::basic_consume(n, STORE_QUEUE)]),
            refused("queue", STORE_QUEUE, "(60, 20)"),
        ),
        (
            "getting from the readings' store",
            Box::new(|n| vec![raw::basic_get(n, STORE_QUEUE)]),
            refused("queue", STORE_QUEUE, "(60, 70)"),
        ),
        (
            "purging the readings' store",
            Box::new(|n| vec![raw::queue_purge(n, STORE_QUEUE)]),
            refused("queue", STORE_QUEUE, "(50, 30)"),
        ),
        (
            "deleting the readings' store",
            Box::new(|n| vec![raw::queue_delete(n, STORE_QUEUE)]),
            refused("queue", STORE_QUEUE, "(50, 40)"),
        ),
        (
            "declaring the readings' store",
            Box::new(|n| vec![raw::queue_declare(n, STORE_QUEUE, false)]),
            refused("queue", STORE_QUEUE, "(50, 10)"),
        ),
        (
            "a forged status",
            Box::new(|n| raw::message(n, EVENTS_EXCHANGE, "", b"{}", plain())),
            refused("exchange", EVENTS_EXCHANGE, "(60, 40)"),
        ),
        (
            "deleting presence",
            Box::new(|n| vec![raw::exchange_delete(n, PRESENCE_EXCHANGE)]),
            refused("exchange", PRESENCE_EXCHANGE, "(40, 20)"),
        ),
        (
            "declaring presence again",
            Box::new(|n| vec![raw::exchange_declare(n, PRESENCE_EXCHANGE, "topic", false)]),
            refused("exchange", PRESENCE_EXCHANGE, "(40, 10)"),
        ),
        (
            "taking a server name",
            Box::new(|n| vec![raw::queue_declare(n, "amq.gen-chosen", true)]),
            "403 ACCESS_REFUSED - queue name 'amq.gen-chosen' contains reserved prefix \
             'amq.*' (50, 10)"
                .to_owned(),
        ),
        (
            "a message claiming to be from another",
            Box::new(|n| {
                let claimed = BasicProperties::default().with_user_id(OTHER.into());
                raw::message(n, "", "amq.gen-nowhere", b"{}", claimed)
            }),
            format!(
                "406 PRECONDITION_FAILED - user_id property set to '{OTHER}' but \
                 authenticated user was '{me}' (60, 40)"
            ),
        ),
    ];
    // Each on a channel of its own, which the refusal closes; the connection goes on.
    for (n, (attempt, frames, expected)) in (1..).zip(cases) {
        let opened = format!("channel.open-ok on {n}");
        expect(&mut client, &[raw::channel_open(n)], &opened).await;
        let refusal = format!("channel.close on {n} {expected}");
        for frame in frames(n) {
            client.send(&frame).await;
        }
        assert_eq!(answer(&mut client).await, refusal, "{attempt}");
        client.send(&raw::channel_close_ok(n)).await;
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused_at_login() {
    let device = crate::device().await;
    let refused = "connection.close 403 ACCESS_REFUSED - Login was refused using \
        authentication mechanism PLAIN. For details see the broker logfile. (0, 0)";
    let wrong = format!("{}-wrong", device.password);
    let attempts = [
        (device.user.as_str(), wrong.as_str()),
        ("nobody-at-all", device.password.as_str()),
    ];
    let tries = attempts.map(|(user, password)| async move {
        let mut client = RawClient::connect(device.addr).await;
        client.send_bytes(raw::PROTOCOL_HEADER).await;
        client.send(&raw::start_ok_as(user, password)).await;
        client.send(&raw::tune_ok(0)).await;
        client.send(&raw::connection_open("/")).await;
        (user, client.answers_until_closed(WITHIN).await)
    });
    for (user, answers) in futures_util::future::join_all(tries).await {
        assert_eq!(answers, ["connection.start", refused], "{user}");
    }
}

#[tokio::test]
async fn a_server_too_must_publish_under_its_own_name() {
    let mut server = RawClient::logged_in(crate::door().await.addr, 0).await;
    expect(&mut server, &[raw::channel_open(1)], "channel.open-ok on 1").await;
    let claimed = BasicProperties::default().with_user_id("someone".into());
    let message = raw::message(1, "", "amq.gen-nowhere", b"{}", claimed);
    let refusal = "channel.close on 1 406 PRECONDITION_FAILED - user_id property set to \
        'someone' but authenticated user was 'guest' (60, 40)";
    expect(&mut server, &message, refusal).await;
}

#[tokio::test]
async fn a_revoked_device_is_disconnected() {
    let device = crate::device().await;
    let me = device.user.as_str();
    let mut client = RawClient::logged_in_as(device.addr, me, &device.password, 0).await;
    expect(&mut client, &[raw::channel_open(1)], "channel.open-ok on 1").await;
    let mut server = RawClient::logged_in(device.addr, 0).await;
    device.account.revoke();
    assert_eq!(
        client.answers_until_closed(WITHIN).await,
        [format!(
            "connection.close 320 CONNECTION_FORCED - user '{me}' is deleted (0, 0)"
        )]
    );
    // Nobody else is.
    expect(&mut server, &[raw::channel_open(1)], "channel.open-ok on 1").await;
}

/// What is refused for its name or type alone, before any permission is checked (so
/// for the server account too), with RabbitMQ's texts; an unknown exchange type is a
/// hard error, which closes the connection.
#[tokio::test]
async fn reserved_names_are_refused_before_permissions() {
    let mut server = RawClient::logged_in(crate::door().await.addr, 0).await;
    let default = "403 ACCESS_REFUSED - operation not permitted on the default exchange";
    let cases = [
        (
            raw::exchange_declare(1, "", "direct", false),
            format!("{default} (40, 10)"),
        ),
        (
            raw::exchange_declare(2, "", "direct", true),
            format!("{default} (40, 10)"),
        ),
        (raw::exchange_delete(3, ""), format!("{default} (40, 20)")),
        (
            raw::queue_bind(4, "amq.gen-x", "", "x"),
            format!("{default} (50, 20)"),
        ),
        (
            raw::exchange_delete(5, "amq.topic"),
            "403 ACCESS_REFUSED - deletion of system exchange 'amq.topic' in vhost '/' not \
             allowed (40, 20)"
                .to_owned(),
        ),
        (
            raw::queue_declare(6, "amq.mine", true),
            "403 ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*' \
             (50, 10)"
                .to_owned(),
        ),
    ];
    for (n, (frame, expected)) in (1..).zip(cases) {
        let opened = format!("channel.open-ok on {n}");
        expect(&mut server, &[raw::channel_open(n)], &opened).await;
        let refusal = format!("channel.close on {n} {expected}");
        expect(&mut server, &[frame], &refusal).await;
        server.send(&raw::channel_close_ok(n)).await;
    }
    expect(&mut server, &[raw::channel_open(7)], "channel.open-ok on 7").await;
    server
        .send(&raw::exchange_declare(
            7,
            "tether-test-bogus",
            "bogus",
            false,
        ))
        .await;
    assert_eq!(
        server.answers_until_closed(WITHIN).await,
        ["connection.close 503 COMMAND_INVALID - unknown exchange type 'bogus' (40, 10)"]
    );
}

/// The server account, logged in on channel 1 once it has declared Tether's exchanges
/// (already there on a RabbitMQ that Tether used; declaring them again is harmless).
async fn topology(addr: SocketAddr) -> RawClient {
    let mut server = RawClient::logged_in(addr, 0).await;
    expect(&mut server, &[raw::channel_open(1)], "channel.open-ok on 1").await;
    for (name, kind) in [
        (PRESENCE_EXCHANGE, "topic"),
        (TELEMETRY_EXCHANGE, "topic"),
        (DISCOVER_EXCHANGE, "fanout"),
        (EVENTS_EXCHANGE, "fanout"),
    ] {
        let declare = raw::exchange_declare(1, name, kind, false);
        expect(&mut server, &[declare], "exchange.declare-ok on 1").await;
    }
    server
}

/// Sends `frames` and checks the broker's next answer.
async fn expect(client: &mut RawClient, frames: &[AMQPFrame], expected: &str) {
    for frame in frames {
        client.send(frame).await;
    }
    assert_eq!(answer(client).await, expected);
}

/// The broker's next frame, described.
async fn answer(client: &mut RawClient) -> String {
    let frame = client.next_within(WITHIN).await;
    frame.as_ref().map_or_else(|| "closed".to_owned(), describe)
}

/// Sends a queue.declare and returns the name in its declare-ok.
async fn declared(client: &mut RawClient, declare: AMQPFrame) -> String {
    client.send(&declare).await;
    match client.next_within(WITHIN).await {
        Some(AMQPFrame::Method(_, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)))) => {
            ok.queue.to_string()
        }
        other => panic!(
            "expected queue.declare-ok, got {:?}",
            other.as_ref().map(describe)
        ),
    }
}
