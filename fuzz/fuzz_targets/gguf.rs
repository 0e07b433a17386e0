#![no_main]
//! Fuzz target: see `quantsmith::fuzzing::gguf`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| quantsmith::fuzzing::gguf(data));
