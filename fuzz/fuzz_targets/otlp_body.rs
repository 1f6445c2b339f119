#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| linkmesh::fuzz::otlp_body(data));
