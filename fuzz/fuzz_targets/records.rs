//! The upstream TLS record layer after the handshake, against whatever a server sends: records
//! sealed with its keys (data, handshake messages, alerts, any content type, any size) or raw
//! bytes, read in pieces down to one byte. No panic, no hang, a bounded handshake buffer, and
//! only the server's own application data handed out, in order, none after its close_notify
//! (see `authrelay::net::records::fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| authrelay::net::records::fuzz::records(data));
