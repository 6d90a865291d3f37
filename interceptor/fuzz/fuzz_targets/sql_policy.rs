//! A SQL text judged by the shipped default policy: never allowed when it cannot be analysed.
//! The body and its properties: `interceptor::fuzzing::sql_policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::sql_policy(data));
