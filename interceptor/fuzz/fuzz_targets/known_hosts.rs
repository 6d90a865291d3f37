//! A `known_hosts` file and a server name, read as the SSH gateway reads them.
//! The input and its properties: `interceptor::fuzzing::known_hosts`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::known_hosts(data));
