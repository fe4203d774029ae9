//! The hub's behaviour against RabbitMQ (`TETHER_TEST_AMQP_URL`, default 127.0.0.1:5672).

#[path = "support/hub_cases.rs"]
mod cases;

fn amqp_url() -> String {
    testkit::rabbitmq_url()
}
