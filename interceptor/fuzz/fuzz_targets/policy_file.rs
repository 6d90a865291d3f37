//! A policy file from arbitrary text: parsed and compiled, or refused with an error.
//! The body and its properties: `interceptor::fuzzing::policy_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::policy_file(data));
