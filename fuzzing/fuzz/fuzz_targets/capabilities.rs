#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = fuzzing::capabilities(data) {
        panic!("capabilities: {finding}");
    }
});
