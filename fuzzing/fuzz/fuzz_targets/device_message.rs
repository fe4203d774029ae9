#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = fuzzing::device_message(data) {
        panic!("device_message: {finding}");
    }
});
