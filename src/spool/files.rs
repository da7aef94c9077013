//! Reading spool files without trusting them: whatever is found in `queue/`, `failed/` or
//! `tmp/` (a damaged or truncated file, a foreign one, a symlink, a directory) is skipped and
//! named in the log, never followed and never allowed to stop the rest of the queue.

use super::{io_error, Envelope, SpoolError, MAGIC};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The longest header line read: 500 recipients of 254 bytes, JSON-escaped, fit many times.
pub(super) const MAX_HEADER_LINE: u64 = 4 * 1024 * 1024;

/// Opens a spool file for reading, refusing a symlink (`O_NOFOLLOW`): a link planted in the
/// spool must not make the relay read, deliver or show a file elsewhere.
pub(super) fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| {
            if f.metadata()?.is_file() {
                Ok(f)
            } else {
                Err(io::Error::other("not a regular file"))
            }
        })
}

/// The envelopes of the spool files in `dir`, oldest first. A file that cannot be read as a
/// spool file is skipped with a warning: one bad entry never hides the others.
pub(super) fn envelopes(dir: &Path) -> Result<Vec<Envelope>, SpoolError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        match read_head(&path, 0) {
            Ok((envelope, _)) if entry.file_name().to_str() == Some(envelope.id.as_str()) => {
                out.push(envelope)
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "spool entry skipped: its name is not its queue ID")
            }
            Err(e) => tracing::warn!(error = %e, "spool entry skipped"),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// A spool file's envelope and up to `body` bytes of the message after it.
pub(super) fn read_head(path: &Path, body: u64) -> Result<(Envelope, Vec<u8>), SpoolError> {
    let file = open_file(path).map_err(io_error(path))?;
    let mut reader = BufReader::new(file.take(MAX_HEADER_LINE));
    let mut line = Vec::with_capacity(1024);
    reader
        .read_until(b'\n', &mut line)
        .map_err(io_error(path))?;
    let (envelope, _) = parse_header(&line, path)?;
    // What the reader holds beyond the line comes first, then the file.
    let mut rest = reader.buffer().to_vec();
    rest.truncate(body as usize);
    let more = body - rest.len() as u64;
    reader
        .into_inner()
        .into_inner()
        .take(more)
        .read_to_end(&mut rest)
        .map_err(io_error(path))?;
    Ok((envelope, rest))
}

/// The envelope of a spool file's bytes, and where the message starts.
pub(super) fn parse_header(raw: &[u8], path: &Path) -> Result<(Envelope, usize), SpoolError> {
    let damaged = |reason: &str| SpoolError::Damaged {
        path: path.display().to_string(),
        reason: reason.to_owned(),
    };
    let end = memchr::memchr(b'\n', raw).ok_or_else(|| damaged("no header line"))?;
    let line = raw[..end]
        .strip_prefix(MAGIC.as_bytes())
        .ok_or_else(|| damaged("not a spool file of this version"))?;
    let envelope = serde_json::from_slice(line).map_err(|_| damaged("unreadable envelope"))?;
    Ok((envelope, end + 1))
}

/// Empties `tmp/` at start (never acknowledged). Only files and links are removed; anything
/// else is left, with a warning, and does not stop the start.
pub(super) fn empty_tmp(tmp: &Path) -> Result<(), SpoolError> {
    for entry in fs::read_dir(tmp).map_err(io_error(tmp))? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if is_dir {
            tracing::warn!(path = %path.display(), "left in the spool's tmp/: a directory, not a message");
        } else if let Err(e) = fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove an unfinished message");
        }
    }
    Ok(())
}
