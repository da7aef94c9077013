//! The durable spool: messages accepted from devices wait here until they are delivered.
//!
//! One file per message, like Postfix's queue (postfix.org/QSHAPE_README.html describes its
//! shape): `queue/ID` holds a header line with the [`Envelope`] (JSON, no secret in it) and
//! then the message's bytes as received. A message is written to `tmp/ID` while it arrives;
//! [`Incoming::commit`] makes it durable before it returns:
//!
//! 1. the file's data and size reach the disk (`fdatasync`);
//! 2. it is renamed into `queue/` (atomic: a reader sees the whole file or none);
//! 3. the `queue/` directory is synced, so the rename survives a crash.
//!
//! Step 3 is shared: one committer thread renames whatever files are ready and syncs the
//! directory once for all of them (group commit), so many devices sending at once cost one
//! directory sync, and no one is told "accepted" before the sync that covers their own file.
//! Concurrent `fdatasync`s of step 1 are batched by the file system's journal itself (ext4's
//! jbd2 commits them together).
//!
//! On [`Spool::open`], `tmp/` is emptied: those messages were never acknowledged. What is in
//! `queue/` was, and is delivered; `failed/` keeps what could not be (for inspection), and
//! `state/ID` records delivery attempts (written atomically; losing one only means an earlier
//! retry).

pub mod dsn;
mod files;
mod id;
pub mod message;
mod own;

use files::{envelopes, open_file, parse_header, read_head};
use id::checked_id;
pub use id::new_id;

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

/// The first bytes of every spool file, and its format version.
const MAGIC: &str = "authrelay-spool 1 ";
/// Bytes buffered before a write to the temporary file.
const WRITE_BUFFER: usize = 256 * 1024;

/// Who sent a message, for whom, from where and when: everything delivery needs besides the
/// message itself. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The queue ID: arrival time in microseconds and a random part, so IDs sort by arrival.
    pub id: String,
    /// The account (`[account.NAME]`) that logged in and delivers it.
    pub account: String,
    /// The MAIL FROM address (empty for the null sender).
    pub sender: String,
    /// The RCPT TO addresses.
    pub recipients: Vec<String>,
    /// Arrival time, Unix seconds.
    pub arrived: u64,
    /// The device's address.
    pub client: String,
    /// A delivery-status notification made by the relay: never bounced itself.
    #[serde(default)]
    pub bounce: bool,
}

/// What delivery attempts have learned about a queued message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    /// Attempts made so far.
    pub attempts: u32,
    /// Not before this time (Unix seconds).
    pub next_try: u64,
    /// The last reply or error, for `authrelay queue show` and the account page.
    pub last_reply: String,
    /// An attempt's outcome is unknown (Graph answered 504, or no answer came): the message may
    /// have been sent, so Sent Items is searched before it is sent again.
    #[serde(default)]
    pub unsure: bool,
}

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file or directory operation failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A spool file that this version cannot read.
    #[error("spool file {path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The committer thread is gone (the process is shutting down).
    #[error("the spool is closed")]
    Closed,
    /// The message is neither queued nor failed: delivered, or deleted (by `authrelay queue
    /// delete` or the account page, perhaps while it was being delivered).
    #[error("{id} is not in the queue: delivered or deleted")]
    NotQueued {
        /// The queue ID.
        id: String,
    },
    /// A device's message would eat into the free space kept for delivery records and
    /// notifications (`min_free_mb`).
    #[error("the spool's file system is down to {free_mb} MB free, and {keep_mb} MB are kept for delivery records and notifications (min_free_mb)")]
    Full {
        /// Megabytes free.
        free_mb: u64,
        /// Megabytes kept free.
        keep_mb: u64,
    },
}

/// Bytes free for unprivileged use on the file system holding `path`.
fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes only into the struct it is given; the path is NUL-terminated.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The spool spool listeners accept into, with its configuration.
pub struct SpoolHandle {
    /// The spool.
    pub spool: Spool,
    /// `[spool]`.
    pub config: crate::config::SpoolConfig,
}

/// A spool directory. Cheap to clone; all clones share one committer.
#[derive(Clone)]
pub struct Spool {
    dir: Arc<Dirs>,
    committer: mpsc::Sender<Ready>,
    commits: Arc<std::sync::atomic::AtomicU64>,
    committed: Arc<tokio::sync::Notify>,
    /// Envelopes committed since the deliverer last took them, so that it need not read the
    /// queue directory to learn of new messages.
    recent: Arc<std::sync::Mutex<Vec<(Envelope, DeliveryState)>>>,
}

/// The spool's directories.
struct Dirs {
    tmp: PathBuf,
    queue: PathBuf,
    failed: PathBuf,
    state: PathBuf,
}

/// A file whose data is on disk, waiting for its rename and the directory sync.
struct Ready {
    tmp: PathBuf,
    target: PathBuf,
    done: tokio::sync::oneshot::Sender<Result<(), SpoolError>>,
}

impl Spool {
    /// Opens (creating) the spool at `path`, empties `tmp/` (never acknowledged), and starts
    /// the committer thread. For the relay; tools use [`Spool::inspect`].
    pub fn open(path: &Path) -> Result<Spool, SpoolError> {
        Self::open_with(path, true)
    }

    /// Opens the spool for `authrelay queue`, leaving `tmp/` alone (a running relay may be
    /// receiving into it).
    pub fn inspect(path: &Path) -> Result<Spool, SpoolError> {
        Self::open_with(path, false)
    }

    fn open_with(path: &Path, clean: bool) -> Result<Spool, SpoolError> {
        let dir = Arc::new(Dirs {
            tmp: path.join("tmp"),
            queue: path.join("queue"),
            failed: path.join("failed"),
            state: path.join("state"),
        });
        // Messages are scans, invoices and payslips: only the relay's user may read them. The
        // mode is given at creation (the umask can only take bits away); an empty directory made
        // beforehand (by an installer, a volume) is made private; a spool with messages in it
        // that group or others can enter is refused rather than used.
        let private = |d: &Path| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(io_error(d))
        };
        private(path)?;
        let mode = fs::metadata(path).map_err(io_error(path))?.mode() & 0o777;
        if mode & 0o077 != 0 {
            let empty = fs::read_dir(path).map_err(io_error(path))?.next().is_none();
            if !empty {
                return Err(io_error(path)(io::Error::other(format!(
                    "the spool directory can be entered by group or others (mode {mode:o}): make it private with chmod 700 {}",
                    path.display()
                ))));
            }
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_error(path))?;
        }
        for d in [&dir.tmp, &dir.queue, &dir.failed, &dir.state] {
            private(d)?;
        }
        if clean {
            files::empty_tmp(&dir.tmp)?;
            files::tidy_states(&dir.state, &dir.queue, &dir.failed);
        }
        let (tx, rx) = mpsc::channel::<Ready>();
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let queue_dir = dir.queue.clone();
        let counter = commits.clone();
        std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || commit_loop(&queue_dir, &rx, &counter))
            .map_err(io_error(path))?;
        Ok(Spool {
            dir,
            committer: tx,
            commits,
            committed: Arc::new(tokio::sync::Notify::new()),
            recent: Arc::default(),
        })
    }

    /// The envelopes committed since the last call, with their states.
    pub fn take_recent(&self) -> Vec<(Envelope, DeliveryState)> {
        std::mem::take(&mut *self.recent.lock().expect("recent lock"))
    }

    /// A message deferred by the deliverer, handed back to it with its new state.
    pub fn retried(&self, envelope: Envelope, state: DeliveryState) {
        self.recent
            .lock()
            .expect("recent lock")
            .push((envelope, state));
    }

    /// Notified after each commit, so delivery starts at once.
    pub fn committed(&self) -> &tokio::sync::Notify {
        &self.committed
    }

    /// Bytes free for unprivileged use on the spool's file system.
    pub fn free_bytes(&self) -> io::Result<u64> {
        free_bytes(&self.dir.queue)
    }

    /// Directory syncs made so far by the committer (each covers one or more messages).
    pub fn directory_syncs(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts a message: its envelope is written first, the bytes follow with
    /// [`Incoming::write`], and [`Incoming::commit`] makes it durable.
    pub async fn begin(&self, envelope: &Envelope) -> Result<Incoming, SpoolError> {
        let tmp = self.dir.tmp.join(&envelope.id);
        let mut header = MAGIC.to_owned();
        header.push_str(&serde_json::to_string(envelope).expect("an envelope serializes"));
        header.push('\n');
        let file = blocking({
            let tmp = tmp.clone();
            move || {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io_error(&tmp))?;
                let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
                out.write_all(header.as_bytes()).map_err(io_error(&tmp))?;
                Ok(out)
            }
        })
        .await?;
        Ok(Incoming {
            spool: self.clone(),
            id: envelope.id.clone(),
            envelope: envelope.clone(),
            tmp,
            file: Some(file),
            pending: Vec::new(),
            keep_free: 0,
        })
    }

    /// True while `id` is in the queue.
    pub fn is_queued(&self, id: &str) -> bool {
        checked_id(id).is_ok_and(|id| self.dir.queue.join(id).exists())
    }

    /// The queued messages' envelopes, oldest first.
    pub fn queued(&self) -> Result<Vec<Envelope>, SpoolError> {
        envelopes(&self.dir.queue)
    }

    /// The failed messages' envelopes, oldest first.
    pub fn failed(&self) -> Result<Vec<Envelope>, SpoolError> {
        envelopes(&self.dir.failed)
    }

    /// Puts a failed message back in the queue, to be tried at once.
    pub fn requeue(&self, id: &str) -> Result<(), SpoolError> {
        let from = self.dir.failed.join(checked_id(id)?);
        let to = self.dir.queue.join(id);
        fs::rename(&from, &to).map_err(io_error(&from))?;
        let _ = fs::remove_file(self.dir.state.join(id));
        sync_dir(&self.dir.queue)
    }

    /// Makes a message due now: a failed one goes back to the queue, a deferred one loses its
    /// wait. Returns its state for [`Spool::retried`] (a running deliverer learns of it there).
    pub fn retry_now(&self, id: &str) -> Result<DeliveryState, SpoolError> {
        if fs::symlink_metadata(self.dir.failed.join(checked_id(id)?)).is_ok_and(|m| m.is_file()) {
            self.requeue(id)?;
            return Ok(DeliveryState::default());
        }
        if !self.is_queued(id) {
            return Err(SpoolError::NotQueued { id: id.to_owned() });
        }
        let mut state = self.state(id)?;
        state.next_try = 0;
        self.defer(id, &state)?;
        Ok(state)
    }

    /// Removes a message, queued or failed, for good.
    pub fn delete(&self, id: &str) -> Result<(), SpoolError> {
        let id = checked_id(id)?;
        let queued = self.dir.queue.join(id);
        let path = if queued.exists() {
            queued
        } else {
            self.dir.failed.join(id)
        };
        fs::remove_file(&path).map_err(io_error(&path))?;
        let _ = fs::remove_file(self.dir.state.join(id));
        sync_dir(path.parent().unwrap_or(&self.dir.queue))
    }

    /// A message's envelope and the start of its text (the header section), queued or failed.
    pub fn show(&self, id: &str) -> Result<(Envelope, String), SpoolError> {
        let id = checked_id(id)?;
        let queued = self.dir.queue.join(id);
        let path = if queued.exists() {
            queued
        } else {
            self.dir.failed.join(id)
        };
        let (envelope, body) = read_head(&path, 256 * 1024)?;
        let end = memchr::memmem::find(&body, b"\r\n\r\n").map_or(body.len(), |e| e + 2);
        Ok((envelope, String::from_utf8_lossy(&body[..end]).into_owned()))
    }

    /// A queued message: its envelope and its bytes.
    pub fn read(&self, id: &str) -> Result<(Envelope, Vec<u8>), SpoolError> {
        let path = self.queued_path(id)?;
        let mut raw = Vec::new();
        open_file(&path)
            .and_then(|mut f| f.read_to_end(&mut raw))
            .map_err(io_error(&path))?;
        let (envelope, start) = parse_header(&raw, &path)?;
        raw.drain(..start);
        Ok((envelope, raw))
    }

    /// What delivery attempts learned about `id` (default when none was recorded, or when
    /// what is there cannot be read as a state).
    pub fn state(&self, id: &str) -> Result<DeliveryState, SpoolError> {
        Ok(files::read_state(&self.dir.state.join(checked_id(id)?)))
    }

    /// Records a deferral (atomically: a temporary file of its own renamed over the old state).
    /// A message deleted meanwhile keeps no state: [`SpoolError::NotQueued`].
    pub fn defer(&self, id: &str, state: &DeliveryState) -> Result<(), SpoolError> {
        files::write_state(&self.dir.state, checked_id(id)?, state)?;
        let kept = [&self.dir.queue, &self.dir.failed].map(|d| d.join(id).exists());
        if kept == [false, false] {
            let _ = fs::remove_file(self.dir.state.join(id));
            return Err(SpoolError::NotQueued { id: id.to_owned() });
        }
        Ok(())
    }

    /// Removes a delivered message, durably: a crash right after must not deliver it again.
    pub fn delivered(&self, id: &str) -> Result<(), SpoolError> {
        let path = self.queued_path(id)?;
        let removed = fs::remove_file(&path);
        let _ = fs::remove_file(self.dir.state.join(id));
        match removed {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(SpoolError::NotQueued { id: id.to_owned() })
            }
            other => other.map_err(io_error(&path)),
        }?;
        sync_dir(&self.dir.queue)
    }

    /// Moves a message that cannot be delivered to `failed/`, keeping its last state.
    pub fn fail(&self, id: &str) -> Result<(), SpoolError> {
        let path = self.queued_path(id)?;
        let target = self.dir.failed.join(id);
        match fs::rename(&path, &target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let _ = fs::remove_file(self.dir.state.join(id));
                Err(SpoolError::NotQueued { id: id.to_owned() })
            }
            other => other.map_err(io_error(&target)),
        }?;
        sync_dir(&self.dir.queue)
    }

    fn queued_path(&self, id: &str) -> Result<PathBuf, SpoolError> {
        Ok(self.dir.queue.join(checked_id(id)?))
    }
}

/// A message being received. Dropped without [`Incoming::commit`], it is removed.
pub struct Incoming {
    spool: Spool,
    id: String,
    envelope: Envelope,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    /// Bytes not yet handed to the blocking writer.
    pending: Vec<u8>,
    /// Free bytes this message's data must leave on the file system (0: no check).
    keep_free: u64,
}

impl Incoming {
    /// The queue ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends message bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= WRITE_BUFFER {
            self.flush_pending().await?;
        }
        Ok(())
    }

    /// Makes every write of this message's data first check that `bytes` stay free after it:
    /// a device's message, so that parallel messages, each let in by the free-space check at
    /// `MAIL FROM`, cannot together fill the disk and leave no room for the delivery records
    /// and notifications the spool writes later (those are written without the check).
    pub fn keeping_free(mut self, bytes: u64) -> Self {
        self.keep_free = bytes;
        self
    }

    async fn flush_pending(&mut self) -> Result<(), SpoolError> {
        let mut file = self.file.take().ok_or(SpoolError::Closed)?;
        let chunk = std::mem::take(&mut self.pending);
        let tmp = self.tmp.clone();
        let keep = self.keep_free;
        let file = blocking(move || {
            if keep > 0 {
                // What the writer holds besides `chunk` is at most its capacity.
                let free = free_bytes(&tmp).map_err(io_error(&tmp))?;
                let needed = (chunk.len() + file.capacity()) as u64;
                if free < keep.saturating_add(needed) {
                    return Err(SpoolError::Full {
                        free_mb: free >> 20,
                        keep_mb: keep >> 20,
                    });
                }
            }
            file.write_all(&chunk).map_err(io_error(&tmp))?;
            Ok(file)
        })
        .await?;
        self.file = Some(file);
        Ok(())
    }

    /// Makes the message durable: its data synced, renamed into the queue, the queue directory
    /// synced (shared with whatever else is committing). Only then may the device be told.
    pub async fn commit(mut self) -> Result<(), SpoolError> {
        self.flush_pending().await?;
        let file = self.file.take().ok_or(SpoolError::Closed)?;
        let tmp = self.tmp.clone();
        blocking(move || {
            let file = file
                .into_inner()
                .map_err(|e| io_error(&tmp)(e.into_error()))?;
            file.sync_data().map_err(io_error(&tmp))
        })
        .await?;
        let (done, wait) = tokio::sync::oneshot::channel();
        let ready = Ready {
            tmp: self.tmp.clone(),
            target: self.spool.dir.queue.join(&self.id),
            done,
        };
        self.spool
            .committer
            .send(ready)
            .map_err(|_| SpoolError::Closed)?;
        // From here the committer owns the file: nothing to remove on drop.
        self.tmp = PathBuf::new();
        wait.await.map_err(|_| SpoolError::Closed)??;
        let envelope = self.envelope.clone();
        self.spool
            .recent
            .lock()
            .expect("recent lock")
            .push((envelope, DeliveryState::default()));
        self.spool.committed.notify_one();
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The committer: takes every file that is ready, renames each into the queue, syncs the
/// directory once, and tells each waiter.
fn commit_loop(queue: &Path, rx: &mpsc::Receiver<Ready>, commits: &std::sync::atomic::AtomicU64) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut results: Vec<Result<(), SpoolError>> = batch
            .iter()
            .map(|r| fs::rename(&r.tmp, &r.target).map_err(io_error(&r.target)))
            .collect();
        let synced = sync_dir(queue).map_err(|e| e.to_string());
        commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (ready, result) in batch.into_iter().zip(results.drain(..)) {
            let outcome = match (&synced, result) {
                (_, Err(e)) => Err(e),
                (Err(text), Ok(())) => Err(SpoolError::Io {
                    path: queue.display().to_string(),
                    source: io::Error::other(text.clone()),
                }),
                (Ok(()), Ok(())) => Ok(()),
            };
            let _ = ready.done.send(outcome);
        }
    }
}

/// Syncs a directory, so that renames and removals in it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Runs blocking file work off the runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| SpoolError::Closed)?
}

#[cfg(test)]
mod tests;
