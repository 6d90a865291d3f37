//! A SPDY exec or port-forward stream of the Kubernetes gateway, both directions.
//! The input and its properties: `interceptor::fuzzing::kube_spdy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| interceptor::fuzzing::kube_spdy(data));
