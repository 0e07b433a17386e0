#![no_main]
//! Fuzz target: see `quantsmith::fuzzing::safetensors`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| quantsmith::fuzzing::safetensors(data));
