//! The same hub behaviour against the embedded broker, started once for this test binary
//! on a free port, in a runtime of its own so that it outlives each test's runtime.

#[path = "support/hub_cases.rs"]
mod cases;

fn amqp_url() -> String {
    testkit::embedded_broker_url()
}
