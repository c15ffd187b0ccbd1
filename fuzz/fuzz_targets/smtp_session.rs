#![no_main]
//! The `smtp_session` target: its input and properties are written at
//! `mailgate::fuzzing::smtp_session`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailgate::fuzzing::smtp_session(data));
