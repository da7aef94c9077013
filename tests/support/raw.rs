//! A raw line client for the exact exchanges of IMAP and POP3 tests.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

/// A raw line client for the exact exchanges of IMAP and POP3 tests (blocking, 20 s timeout).
pub struct Raw {
    reader: std::io::BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw {
            reader: std::io::BufReader::new(s),
        }
    }

    /// One line with its CRLF ("" at end of stream).
    pub fn line(&mut self) -> String {
        let mut l = Vec::new();
        std::io::BufRead::read_until(&mut self.reader, b'\n', &mut l).unwrap_or(0);
        String::from_utf8_lossy(&l).into_owned()
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Sends `s` and returns the next line.
    pub fn ask(&mut self, s: &str) -> String {
        self.write(s.as_bytes());
        self.line()
    }

    /// Lines up to and including the one starting with `tag `.
    pub fn until(&mut self, tag: &str) -> String {
        let mut out = String::new();
        loop {
            let l = self.line();
            out.push_str(&l);
            if l.is_empty() || l.starts_with(&format!("{tag} ")) {
                return out;
            }
        }
    }

    /// A POP3 multi-line body up to its terminating dot line (without it).
    pub fn body(&mut self) -> String {
        let mut out = String::new();
        loop {
            let l = self.line();
            if l == ".\r\n" || l.is_empty() {
                return out;
            }
            out.push_str(&l);
        }
    }

    /// True when the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        matches!(
            std::io::Read::read(&mut self.reader, &mut buf),
            Ok(0) | Err(_)
        )
    }
}
