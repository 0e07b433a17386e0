#![no_main]
//! Fuzz target: see `quantsmith::fuzzing::quantized_dir`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| quantsmith::fuzzing::quantized_dir(data));
