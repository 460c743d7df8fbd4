//! A config file's text, as TOML and as JSON (config).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockhost::fuzzing::config(data));
