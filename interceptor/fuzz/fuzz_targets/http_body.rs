//! A response body masked by content type, in chunks and whole.
//! The body and its properties: `interceptor::fuzzing::http_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::http_body(data));
