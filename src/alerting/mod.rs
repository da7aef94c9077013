//! The tasks behind `[alerts]`: [`send`] delivers each event (webhook, e-mail through the
//! spool) and [`watch`] raises what no request sees (a spool that stops moving, a secret or
//! certificate about to expire). The events themselves are [`crate::alerts`].

pub mod send;
pub mod watch;
