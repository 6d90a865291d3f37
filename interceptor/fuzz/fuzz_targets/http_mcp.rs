//! An MCP POST body read into calls, forwarded in part and refused.
//! The body and its properties: `interceptor::fuzzing::http_mcp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::http_mcp(data));
