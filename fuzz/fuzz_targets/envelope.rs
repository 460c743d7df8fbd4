//! A message from another node on the bus (cluster::envelope).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockhost::fuzzing::envelope(data));
