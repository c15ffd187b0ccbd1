#![no_main]
//! The `config` target: its input and properties are written at
//! `mailgate::fuzzing::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailgate::fuzzing::config(data));
