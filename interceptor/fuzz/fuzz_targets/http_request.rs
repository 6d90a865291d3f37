//! An HTTP request head read once for policy and forwarding.
//! The input and its properties: `interceptor::fuzzing::http_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::http_request(data));
