#![no_main]
//! The `heartbeat` target: its input and properties are written at
//! `mailgate::fuzzing::heartbeat`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailgate::fuzzing::heartbeat(data));
