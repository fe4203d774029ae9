//! RabbitMQ's HTTP auth backend as Tether serves it, over real HTTP: provisioned
//! devices with their secret get in, and the policy the embedded broker applies is
//! what RabbitMQ is told (their own inbox, their own presence and readings, nothing
//! else). Only trusted addresses may ask.

mod support;

use support::Running;

async fn start(trusted: Vec<std::net::IpAddr>) -> Running {
    support::start_with(|config| config.broker_auth_from = trusted).await
}

/// What RabbitMQ asks a running server.
trait BrokerAuthTests {
    async fn ask(&self, endpoint: &str, query: &[(&str, &str)]) -> (u16, String);
}

impl BrokerAuthTests for Running {
    /// What RabbitMQ would be told, asked as RabbitMQ asks by default (GET).
    async fn ask(&self, endpoint: &str, query: &[(&str, &str)]) -> (u16, String) {
        let response = reqwest::Client::new()
            .get(format!("{}/auth/rabbitmq/{endpoint}", self.base))
            .query(query)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

#[tokio::test]
async fn rabbitmq_is_told_who_gets_in_and_what_each_device_may_do() {
    let running = start(Vec::new()).await;
    let device = testkit::unique("boiler");
    let secret = running.accounts.provision_device(&device).await.unwrap();
    let allow = (200, "allow".to_owned());
    let deny = (200, "deny".to_owned());

    let user = |name: &str, password: &str| {
        let (name, password) = (name.to_owned(), password.to_owned());
        let running = &running;
        async move {
            running
                .ask("user", &[("username", &name), ("password", &password)])
                .await
        }
    };
    assert_eq!(user(&device, &secret).await, allow);
    assert_eq!(user(&device, "not-the-secret").await, deny);
    assert_eq!(user("never-provisioned", &secret).await, deny);
    assert_eq!(
        user("guest", "guest").await,
        deny,
        "servers use RabbitMQ's own accounts"
    );
    // The same question as a form (`auth_http.http_method = post`).
    let posted = reqwest::Client::new()
        .post(format!("{}/auth/rabbitmq/user", running.base))
        .form(&[("username", device.as_str()), ("password", secret.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.text().await.unwrap(), "allow");

    assert_eq!(
        running
            .ask("vhost", &[("username", &device), ("vhost", "/")])
            .await,
        allow
    );
    assert_eq!(
        running
            .ask("vhost", &[("username", &device), ("vhost", "other")])
            .await,
        deny
    );

    let resource = |kind: &'static str, name: &'static str, permission: &'static str| {
        let (running, device) = (&running, device.clone());
        async move {
            running
                .ask(
                    "resource",
                    &[
                        ("username", device.as_str()),
                        ("vhost", "/"),
                        ("resource", kind),
                        ("name", name),
                        ("permission", permission),
                    ],
                )
                .await
        }
    };
    assert_eq!(
        resource("queue", "amq.gen-AbC", "configure").await,
        allow,
        "its inbox"
    );
    assert_eq!(resource("queue", "amq.gen-AbC", "read").await, allow);
    assert_eq!(resource("exchange", "tether.discover", "read").await, allow);
    assert_eq!(
        resource("exchange", "amq.default", "write").await,
        allow,
        "replies"
    );
    assert_eq!(
        resource("exchange", "tether.presence", "write").await,
        allow
    );
    assert_eq!(
        resource("exchange", "tether.events", "write").await,
        deny,
        "forged statuses"
    );
    assert_eq!(
        resource("exchange", "tether.presence", "read").await,
        deny,
        "reading presence"
    );
    assert_eq!(
        resource("exchange", "tether.presence", "configure").await,
        deny,
        "deleting it"
    );
    assert_eq!(
        resource("queue", "tether.telemetry.store", "read").await,
        deny
    );
    assert_eq!(
        resource("queue", "tether.telemetry.store", "configure").await,
        deny
    );

    let topic = |exchange: &'static str, key: String| {
        let (running, device) = (&running, device.clone());
        async move {
            running
                .ask(
                    "topic",
                    &[
                        ("username", device.as_str()),
                        ("vhost", "/"),
                        ("resource", "topic"),
                        ("name", exchange),
                        ("permission", "write"),
                        ("routing_key", key.as_str()),
                    ],
                )
                .await
        }
    };
    assert_eq!(
        topic("tether.presence", format!("presence.{device}.hello")).await,
        allow
    );
    assert_eq!(
        topic("tether.telemetry", format!("telemetry.{device}.temp")).await,
        allow
    );
    assert_eq!(
        topic("tether.presence", "presence.someone-else.hello".into()).await,
        deny,
        "hello as another"
    );
    assert_eq!(
        topic("tether.telemetry", format!("presence.{device}.hello")).await,
        deny
    );

    // A revoked device is out at its next login.
    running.accounts.revoke_device(&device).await.unwrap();
    assert_eq!(user(&device, &secret).await, deny);
}

#[tokio::test]
async fn only_trusted_addresses_may_ask() {
    // Trusting only another host: this machine's questions are refused.
    let running = start(vec!["192.0.2.10".parse().unwrap()]).await;
    let device = testkit::unique("boiler");
    let secret = running.accounts.provision_device(&device).await.unwrap();
    assert_eq!(
        running
            .ask("user", &[("username", &device), ("password", &secret)])
            .await,
        (403, "deny".to_owned())
    );
}

#[tokio::test]
async fn garbage_and_floods_are_denied() {
    let running = start(Vec::new()).await;
    let device = testkit::unique("boiler");
    running.accounts.provision_device(&device).await.unwrap();
    let deny = (200, "deny".to_owned());
    // Missing, unknown or nonsense fields.
    assert_eq!(running.ask("user", &[]).await, deny);
    assert_eq!(running.ask("user", &[("username", &device)]).await, deny);
    assert_eq!(
        running
            .ask("user", &[("username", "a.b#*"), ("password", "x")])
            .await,
        deny
    );
    let odd = [
        ("username", device.as_str()),
        ("vhost", "/"),
        ("resource", "bananas"),
        ("name", "amq.gen-x"),
        ("permission", "configure"),
    ];
    assert_eq!(running.ask("resource", &odd).await, deny);
    let odd = [
        ("username", device.as_str()),
        ("vhost", "/"),
        ("resource", "queue"),
        ("name", "amq.gen-x"),
        ("permission", "everything"),
    ];
    assert_eq!(running.ask("resource", &odd).await, deny);
    // A body far larger than any question is not read.
    let flood = reqwest::Client::new()
        .post(format!("{}/auth/rabbitmq/user", running.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "username={device}&password={}",
            "x".repeat(1 << 20)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(flood.status().as_u16(), 413);
}
