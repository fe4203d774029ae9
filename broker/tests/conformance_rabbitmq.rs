//! The broker conformance cases against RabbitMQ (`TETHER_TEST_AMQP_URL`, default
//! 127.0.0.1:5672): the embedded broker must behave the same. Fails if RabbitMQ is not
//! running (scripts/test.sh starts it).

#[path = "support/conformance.rs"]
mod cases;
#[path = "support/topics.rs"]
mod topics;

async fn broker_url() -> String {
    std::env::var("TETHER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}
