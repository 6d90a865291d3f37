//! A Kubernetes API request's method, path and query, read as the API server reads them.
//! The input and its properties: `interceptor::fuzzing::kube_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::kube_request(data));
