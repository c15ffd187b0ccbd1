#![no_main]
//! The `maildrop` target: its input and properties are written at
//! `mailgate::fuzzing::maildrop`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailgate::fuzzing::maildrop(data));
