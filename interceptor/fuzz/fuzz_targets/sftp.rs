//! The agent's sftp stream, framed and classified as the SSH gateway does.
//! The input and its properties: `interceptor::fuzzing::sftp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::sftp(data));
