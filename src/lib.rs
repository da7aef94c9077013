//! authrelay: a local SMTP/IMAP/POP3 relay that accepts legacy username/password logins and
//! logs in upstream with OAuth 2.0 (SASL XOAUTH2), then relays the session byte for byte.
//!
//! The parts, in the order a session meets them (see docs/ARCHITECTURE.md):
//! - [`net`]: listeners, TLS, and the connection type;
//! - [`session`]: one pre-login driver with a description per protocol, then the byte pipe;
//! - [`codec`]: sans-I/O, zero-copy protocol parsers the sessions drive;
//! - [`auth`]: accounts, local password checks, access tokens and OAuth grants;
//! - [`admin`]: the admin HTTP server: account pages and the consent flow;
//! - [`config`]: the typed configuration and its validation;
//! - [`credential`]: password hashes and certificate assertions;
//! - [`store`]: the token store, a local file with tokens sealed at rest;
//! - [`metrics`]: counters for `/metrics`;
//! - [`logging`]: the text log's field format, which a client cannot forge;
//! - [`secret`]: types that keep secrets out of logs;
//! - [`alerts`]: events that need an administrator, told once, repeated with back-off, resolved;
//! - [`alerting`]: the tasks that send alerts (webhook, e-mail) and watch the spool and expiry dates;
//! - [`civil`]: UTC dates and times in RFC 5322 and RFC 3339 form;
//! - [`live`]: `authrelay check --live`: each account's login through each listener, now;
//! - [`shared`]: what sessions, the admin server and the upkeep share;
//! - [`spool`]: the durable message spool (storage; delivery comes with spool mode).

#![warn(missing_docs)]

pub mod admin;
pub mod alerting;
pub mod alerts;
pub mod app;
pub mod auth;
pub mod civil;
pub mod codec;
pub mod config;
pub mod credential;
pub mod deliver;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod secret;
pub mod session;
pub mod shared;
pub mod spool;
pub mod store;
