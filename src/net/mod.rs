//! Sockets and TLS: the listeners, the TLS configurations, and the connection type the sessions
//! read and write through.

pub mod conn;
pub mod listener;
pub mod tls;
