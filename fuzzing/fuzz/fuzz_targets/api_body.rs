#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = fuzzing::api_body(data) {
        panic!("api_body: {finding}");
    }
});
