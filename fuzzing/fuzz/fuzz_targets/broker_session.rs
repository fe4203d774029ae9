#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = fuzzing::broker_session(data) {
        panic!("broker_session: {finding}");
    }
});
