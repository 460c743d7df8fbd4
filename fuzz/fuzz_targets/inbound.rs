//! A client's WebSocket text frame (protocol::inbound).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockhost::fuzzing::inbound(data));
