//! MySQL packets from either side, as the gateway reads them.
//! The input and its properties: `interceptor::fuzzing::mysql`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::mysql(data));
