//! An HTTP API request target and its signature (protocol::signature, form_urlencoded).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockhost::fuzzing::api_query(data));
