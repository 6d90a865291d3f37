//! Command notations (HTTP request lines, MCP calls, kubectl-like requests) and shell command
//! lines. The body and its properties: `interceptor::fuzzing::commands`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::commands(data));
