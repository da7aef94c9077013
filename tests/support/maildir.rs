//! What Dovecot stored: waiting for a delivered message in a maildir, putting one there, and
//! comparing what arrived with what was sent.

use super::interop::*;
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Waits for a delivered message that contains `marker` in `user`'s maildir.
pub fn delivered(user: &str, marker: &str, wait: Duration) -> Option<Vec<u8>> {
    let (local, domain) = user.split_once('@').unwrap();
    let maildir = run_dir()
        .join("mail")
        .join(domain)
        .join(local)
        .join("Maildir");
    let deadline = Instant::now() + wait;
    loop {
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(maildir.join(sub)) {
                for e in entries.flatten() {
                    // The marker is in the headers: look at the head of each file only, so that
                    // large messages from other tests are not read over and over.
                    let mut head = vec![0u8; 16 * 1024];
                    let n = std::fs::File::open(e.path())
                        .and_then(|mut f| f.read(&mut head))
                        .unwrap_or(0);
                    if head[..n]
                        .windows(marker.len())
                        .any(|w| w == marker.as_bytes())
                    {
                        return std::fs::read(e.path()).ok();
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A test message with a unique marker: dot-stuffing bait, 8-bit text, optional padding.
pub fn message(marker: &str, attachment_bytes: usize) -> Vec<u8> {
    let mut m = format!(
        "From: alice@example.com\r\nTo: alice@example.com\r\nSubject: interop {marker}\r\nMessage-ID: <{marker}@authrelay.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nHello from {marker}.\r\n.a line that starts with a dot\r\n..two dots\r\n.\r\n8-bit: h\u{e9}llo w\u{f6}rld \u{65e5}\u{672c}\u{8a9e}\r\n"
    )
    .into_bytes();
    if attachment_bytes > 0 {
        // Base64-like lines of 76 characters, as a mail client encodes an attachment.
        let line =
            b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
        let mut written = 0;
        let mut i = 0u64;
        while written < attachment_bytes {
            let mut l = line.to_vec();
            let tag = format!("{i:08}");
            l[..8].copy_from_slice(tag.as_bytes());
            m.extend_from_slice(&l);
            written += l.len();
            i += 1;
        }
    }
    m.extend_from_slice(b"end of message\r\n");
    m
}

/// The maildir holds the message as sent with LF line ends, after the trace headers.
pub fn assert_delivered_exactly(stored: &[u8], sent: &[u8]) {
    let sent_lf: Vec<u8> = String::from_utf8_lossy(sent)
        .replace("\r\n", "\n")
        .into_bytes();
    assert!(
        stored.ends_with(&sent_lf),
        "maildir bytes differ from what was sent (stored {} bytes, sent {} bytes)",
        stored.len(),
        sent_lf.len()
    );
}

/// Puts a message straight into `user`'s maildir (as Dovecot's user), returning its file.
pub fn seed_maildir(user: &str, name: &str, message: &[u8]) -> PathBuf {
    let (local, domain) = user.split_once('@').unwrap();
    let maildir = run_dir()
        .join("mail")
        .join(domain)
        .join(local)
        .join("Maildir");
    for sub in ["", "/new", "/cur", "/tmp"] {
        let dir = format!("{}{sub}", maildir.display());
        let out = Command::new("install")
            .args(["-d", "-o", "vmail", "-g", "vmail", &dir])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The domain and user directories above the maildir too.
        let _ = Command::new("chown")
            .args(["vmail:vmail", maildir.parent().unwrap().to_str().unwrap()])
            .status();
        let _ = Command::new("chown")
            .args([
                "vmail:vmail",
                maildir
                    .parent()
                    .unwrap()
                    .parent()
                    .unwrap()
                    .to_str()
                    .unwrap(),
            ])
            .status();
    }
    let path = maildir.join("new").join(name);
    std::fs::write(&path, message).unwrap();
    let _ = Command::new("chown")
        .args(["vmail:vmail", path.to_str().unwrap()])
        .status();
    path
}

/// The files in `user`'s maildir (new and cur).
pub fn maildir_files(user: &str) -> Vec<PathBuf> {
    let (local, domain) = user.split_once('@').unwrap();
    let maildir = run_dir()
        .join("mail")
        .join(domain)
        .join(local)
        .join("Maildir");
    ["new", "cur"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(maildir.join(sub)).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()))
        .collect()
}
