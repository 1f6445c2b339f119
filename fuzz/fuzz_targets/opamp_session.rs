#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| linkmesh::fuzz::opamp_session(data));
