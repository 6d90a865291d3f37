//! Detectors over arbitrary bytes, and masking of a text and a result value.
//! The body and its properties: `interceptor::fuzzing::masking`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::masking(data));
