#![no_main]
//! Fuzz target: see `quantsmith::fuzzing::hf_config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| quantsmith::fuzzing::hf_config(data));
