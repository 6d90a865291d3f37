//! A byte stream through the stream masker, in chunks of varied sizes.
//! The body and its properties: `interceptor::fuzzing::masking_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::masking_stream(data));
