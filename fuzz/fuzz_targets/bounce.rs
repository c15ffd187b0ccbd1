#![no_main]
//! The `bounce` target: its input and properties are written at
//! `mailgate::fuzzing::bounce`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailgate::fuzzing::bounce(data));
