//! Reading spool files without trusting them: whatever is found in `queue/`, `failed/` or
//! `tmp/` (a damaged or truncated file, a foreign one, a symlink, a directory) is skipped and
//! named in the log, never followed and never allowed to stop the rest of the queue.

use super::{io_error, DeliveryState, Envelope, SpoolError, MAGIC};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
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

/// The longest delivery state read: a few numbers and the last reply (bounded when received).
const MAX_STATE: u64 = 64 * 1024;

/// A delivery state, read without following a link and bounded. What cannot be read as a state
/// (a planted link, a damaged file) counts as none, with a warning: it never stops a scan.
pub(super) fn read_state(path: &Path) -> DeliveryState {
    let mut raw = Vec::new();
    let read = open_file(path).and_then(|f| f.take(MAX_STATE).read_to_end(&mut raw));
    match read.map(|_| serde_json::from_slice(&raw)) {
        Ok(Ok(state)) => state,
        Err(e) if e.kind() == io::ErrorKind::NotFound => DeliveryState::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "delivery state skipped");
            DeliveryState::default()
        }
        Ok(Err(_)) => {
            tracing::warn!(path = %path.display(), "delivery state skipped: unreadable");
            DeliveryState::default()
        }
    }
}

/// Writes `id`'s state in `dir` atomically: into a new file of its own (`O_EXCL`, so nothing
/// found in place, a link or another process's file, is followed or written through), then
/// renamed over the old state.
pub(super) fn write_state(dir: &Path, id: &str, state: &DeliveryState) -> Result<(), SpoolError> {
    let tmp = dir.join(format!(".{id}.{:012x}.tmp", rand::random::<u64>() >> 16));
    let raw = serde_json::to_vec(state).expect("a delivery state serializes");
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&raw))
        .and_then(|()| fs::rename(&tmp, dir.join(id)));
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(&tmp)(e)
    })
}

/// At start: removes states left half-written by a crash, links (the relay writes none), and
/// states whose message is gone (deleted while it was being delivered).
pub(super) fn tidy_states(state: &Path, queue: &Path, failed: &Path) {
    let Ok(entries) = fs::read_dir(state) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let half_written = name
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"));
        let link = entry.file_type().is_ok_and(|t| t.is_symlink());
        let orphan = !(queue.join(&name).exists() || failed.join(&name).exists());
        if half_written || link || orphan {
            let _ = fs::remove_file(entry.path());
        }
    }
}
