//! What a device account may not do (`support/identity_cases.rs`), on the tests' own
//! RabbitMQ, which admits devices through Tether's HTTP auth backend
//! (`TETHER_TEST_IDENTITY_AMQP_URL`, `scripts/identity-broker.sh`).

#[path = "support/identity_cases.rs"]
mod cases;

fn amqp_url() -> String {
    testkit::rabbitmq_url()
}
