//! Sans-I/O protocol codecs.
//!
//! Every function here takes the bytes received so far (`&[u8]`) and returns a borrowed view of
//! one complete unit (a command, a reply) together with the number of bytes it consumed, or
//! `None` when more input is needed. Nothing here reads a socket, allocates per byte, or knows
//! about accounts and tokens: the sessions in the session module drive these codecs.

pub mod imap;
pub mod line;
pub mod pop3;
pub mod proxy;
pub mod sasl;
pub mod smtp;
pub mod smtp_data;
