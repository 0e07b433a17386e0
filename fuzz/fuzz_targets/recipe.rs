#![no_main]
//! Fuzz target: see `quantsmith::fuzzing::recipe`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| quantsmith::fuzzing::recipe(data));
