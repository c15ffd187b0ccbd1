#![no_main]
//! The `upstream_reply` target: its input and properties are written at
//! `mailgate::fuzzing::upstream_reply`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailgate::fuzzing::upstream_reply(data));
