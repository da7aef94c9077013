//! Log output that a client cannot forge.
//!
//! Usernames, sender addresses, upstream replies and identity-provider text reach the log from
//! the network. tracing's default text format writes field values as they are, so a username
//! like `x" account="alice" outcome="relayed"` or one with a CR LF would forge fields or whole
//! lines. [`SafeFields`] formats every field the same way whatever its origin: values made of
//! plain characters are written bare, anything else is quoted, with `"`, `\`, control characters
//! and Unicode format characters (bidi overrides, U+2028 …) escaped. The message is escaped but
//! not quoted. The JSON format needs none of this: JSON strings are escaped by the encoder.

use crate::codec::line::is_unsafe_char;
use std::fmt;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// Field formatter for the text log: see the module documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct SafeFields;

impl<'writer> FormatFields<'writer> for SafeFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = SafeVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct SafeVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl SafeVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            self.writer
                .write_str(separator)
                .and_then(|_| write_escaped(&mut self.writer, value))
        } else {
            write!(self.writer, "{separator}{}=", field.name())
                .and_then(|_| write_value(&mut self.writer, value))
        };
    }
}

impl Visit for SafeVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

/// True when a value can be written bare: no quote, backslash, space, `=` or unsafe character.
fn is_bare(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| !is_unsafe_char(c) && !matches!(c, '"' | '\\' | ' ' | '='))
}

fn write_value(w: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if is_bare(value) {
        return w.write_str(value);
    }
    w.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => w.write_str("\\\"")?,
            '\\' => w.write_str("\\\\")?,
            c if is_unsafe_char(c) => write!(w, "\\u{{{:x}}}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    w.write_char('"')
}

fn write_escaped(w: &mut impl fmt::Write, value: &str) -> fmt::Result {
    for c in value.chars() {
        if is_unsafe_char(c) {
            write!(w, "\\u{{{:x}}}", c as u32)?;
        } else {
            w.write_char(c)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(f: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(SafeFields)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn forged_fields_and_lines_stay_inside_their_value() {
        let user = "x\" account=\"alice\" outcome=\"relayed\"";
        let out = logged(|| {
            let span = tracing::info_span!("session", peer = "127.0.0.1", account = "bob");
            let _g = span.enter();
            tracing::info!(user = %user, "login failed\r\nINFO forged line");
            tracing::info!(user = %"evil\u{202E}txt.exe\u{2028}x", plain = %"scanner@contoso.com", "ok");
        });
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(
            out.contains(r#"user="x\" account=\"alice\" outcome=\"relayed\"""#),
            "{out}"
        );
        assert!(
            out.contains(r"login failed\u{d}\u{a}INFO forged line"),
            "{out}"
        );
        assert!(
            out.contains(r#"user="evil\u{202e}txt.exe\u{2028}x""#),
            "{out}"
        );
        assert!(out.contains("plain=scanner@contoso.com"), "{out}");
        assert!(out.contains("session{peer=127.0.0.1 account=bob}"), "{out}");
    }
}
