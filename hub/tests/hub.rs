//! The hub's behaviour against RabbitMQ: the tests' own node, which admits devices
//! through Tether's HTTP auth backend (`TETHER_TEST_IDENTITY_AMQP_URL`).

#[path = "support/hub_cases.rs"]
mod cases;

fn amqp_url() -> String {
    testkit::rabbitmq_url()
}
