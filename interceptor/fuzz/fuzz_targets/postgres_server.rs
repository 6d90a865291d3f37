//! A server's bytes: authentication, notices, RowDescription and DataRow masking, COPY data.
//! The body and its properties: `interceptor::fuzzing::postgres_server`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::postgres_server(data));
