#![no_main]
//! The `data_reader` target: its input and properties are written at
//! `mailgate::fuzzing::data_reader`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailgate::fuzzing::data_reader(data));
