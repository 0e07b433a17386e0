#![no_main]
//! Fuzz target: see `quantsmith::fuzzing::format_spec`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| quantsmith::fuzzing::format_spec(data));
