//! The valid values of each configuration enum, listed in `authrelay check`'s messages.

use super::reader::Choices;
use super::*;

impl Choices for Protocol {
    const VALUES: &'static [&'static str] = &["smtp", "imap", "pop3"];
}
impl Choices for LocalTls {
    const VALUES: &'static [&'static str] = &["none", "starttls", "implicit"];
}
impl Choices for UpstreamTls {
    const VALUES: &'static [&'static str] = &["starttls", "implicit", "none"];
}
impl Choices for Provider {
    const VALUES: &'static [&'static str] = &["microsoft", "google", "custom"];
}
impl Choices for LogFormat {
    const VALUES: &'static [&'static str] = &["text", "json"];
}
impl Choices for TlsVersion {
    const VALUES: &'static [&'static str] = &["1.0", "1.1", "1.2"];
}
