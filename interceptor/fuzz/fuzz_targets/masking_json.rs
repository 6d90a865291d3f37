//! A JSON document through field rules (JSON paths, Kubernetes Secrets) and detectors.
//! The body and its properties: `interceptor::fuzzing::masking_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::masking_json(data));
