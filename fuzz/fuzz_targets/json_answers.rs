#![no_main]
//! The `json_answers` target: its input and properties are written at
//! `mailgate::fuzzing::json_answers`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailgate::fuzzing::json_answers(data));
