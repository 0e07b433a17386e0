#![no_main]
//! Fuzz target: see `quantsmith::fuzzing::imatrix`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| quantsmith::fuzzing::imatrix(data));
