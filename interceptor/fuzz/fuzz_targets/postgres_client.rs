//! A client's bytes: start-up packets, then tagged messages framed with the size limit.
//! The body and its properties: `interceptor::fuzzing::postgres_client`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::postgres_client(data));
