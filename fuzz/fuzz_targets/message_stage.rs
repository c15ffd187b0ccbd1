#![no_main]
//! The `message_stage` target: its input and properties are written at
//! `mailgate::fuzzing::message_stage`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailgate::fuzzing::message_stage(data));
