//! Every fuzz target, on stable, in the test command: first on every input of its
//! corpus (`fuzzing/corpus/<target>/`: what cargo-fuzz kept from its long runs, the
//! inputs that once found a bug among them), then on inputs proptest generates.

use std::path::PathBuf;

use proptest::{collection::vec, prelude::*, test_runner::Config};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} cannot be read: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).expect("a corpus file reads");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

fn replay(target: &str) {
    let run = fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target")
        .1;
    let inputs = corpus(target);
    assert!(
        !inputs.is_empty(),
        "the corpus of {target} is empty: it is kept in the repository"
    );
    for (path, bytes) in inputs {
        if let Err(finding) = run(&bytes) {
            panic!("{target} on {}: {finding}", path.display());
        }
    }
}

#[test]
fn broker_session_corpus() {
    replay("broker_session");
}

#[test]
fn device_message_corpus() {
    replay("device_message");
}

#[test]
fn capabilities_corpus() {
    replay("capabilities");
}

#[test]
fn api_body_corpus() {
    replay("api_body");
}

proptest! {
    #![proptest_config(Config { cases: 300, failure_persistence: None, ..Config::default() })]

    #[test]
    fn broker_session_generated(data in vec(any::<u8>(), 0..2048)) {
        fuzzing::broker_session(&data).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(Config { cases: 5_000, failure_persistence: None, ..Config::default() })]

    #[test]
    fn device_message_generated(data in vec(any::<u8>(), 0..1024)) {
        fuzzing::device_message(&data).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn capabilities_generated(data in vec(any::<u8>(), 0..1024)) {
        fuzzing::capabilities(&data).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn api_body_generated(data in vec(any::<u8>(), 0..1024)) {
        fuzzing::api_body(&data).map_err(TestCaseError::fail)?;
    }
}
