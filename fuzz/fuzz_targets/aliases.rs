#![no_main]
//! The `aliases` target: its input and properties are written at
//! `mailgate::fuzzing::aliases`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailgate::fuzzing::aliases(data));
