//! Fuzz targets for every parser and checker that takes bytes from outside: what a
//! device, a browser or anyone on the network can send. Each target is a function of
//! arbitrary bytes that returns `Err` when a property is broken; a panic anywhere (in a
//! broker task as well) is a finding too.
//!
//! - [`broker_session`]: a script of AMQP frames (methods with hostile fields, content,
//!   raw bytes) played over up to four connections of the embedded broker, as the
//!   server account and as device accounts; the broker must then still serve a new
//!   connection, end every connection whose peer hung up, and stop in time.
//! - [`device_message`]: a message as a device or server sends it, through the
//!   protocol's decoder; what decodes must encode back to itself.
//! - [`capabilities`]: a device's announced capabilities and a command's arguments
//!   through the validator; what it accepts it must accept again unchanged.
//! - [`api_body`]: the API's request bodies and queries through their decoders and
//!   checks.
//!
//! Two drivers run them: cargo-fuzz (`fuzzing/fuzz`, nightly, for long runs) and the
//! tests of this crate (stable, in the test command), which replay the corpora kept in
//! `fuzzing/corpus/<target>/` and run each target on inputs proptest generates.

mod amqp;
mod json;
mod session;
mod targets;

use std::sync::{Mutex, Once};

pub use session::broker_session;
pub use targets::{api_body, capabilities, device_message, input_bytes};

/// What a target found: a broken property, or a panic.
pub type Finding = String;

/// A fuzz target: `Err` when a property is broken.
pub type Target = fn(&[u8]) -> Result<(), Finding>;

/// Every target, by the name its corpus directory and cargo-fuzz binary have.
pub const TARGETS: [(&str, Target); 4] = [
    ("broker_session", broker_session),
    ("device_message", device_message),
    ("capabilities", capabilities),
    ("api_body", api_body),
];

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every panic, on any thread (a broker task's panic is caught by tokio and
/// would otherwise go unnoticed), then lets the hook in place before (libFuzzer's,
/// which aborts) see it too.
fn watch_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut panics) = PANICS.lock() {
                panics.push(info.to_string());
            }
            previous(info);
        }));
    });
}

/// The panics recorded since the last call.
fn take_panics() -> Vec<String> {
    PANICS
        .lock()
        .map(|mut panics| std::mem::take(&mut *panics))
        .unwrap_or_default()
}

/// One target at a time: the record of panics is the process's, and the test harness
/// runs tests on several threads, so one target's panic must not be cleared by, or
/// blamed on, another running beside it.
static RUNNING: Mutex<()> = Mutex::new(());

/// Runs `target` and turns any panic during it (on any thread) into a finding.
fn guarded(target: impl FnOnce() -> Result<(), Finding>) -> Result<(), Finding> {
    let _one_at_a_time = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    watch_panics();
    take_panics();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(target))
        .unwrap_or_else(|_| Err("the target panicked".into()));
    let panics = take_panics();
    if !panics.is_empty() {
        return Err(format!("panicked: {}", panics.join(" | ")));
    }
    outcome
}
