//! What a device account may not do (`support/identity_cases.rs`), on the embedded
//! broker with device accounts of its own.

#[path = "support/identity_cases.rs"]
mod cases;

fn amqp_url() -> String {
    testkit::embedded_broker_url()
}
