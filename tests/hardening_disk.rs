//! A spool on a nearly full disk (issue 26: the spool attacked). `MAIL FROM` lets a message in
//! while its file system has room for the largest message and `min_free_mb`, but several
//! devices sending at once each pass that check before any of them has written: together they
//! filled the disk, some got `451` after sending everything, and the delivery records and
//! notifications the spool writes later found no room ("the spool could not record a
//! delivery"). Now a device's message stops at `min_free_mb` with `452 4.3.1` (RFC 3463:
//! mail system full), and that margin stays for the spool's own writes.
//!
//! The spool is a 16 MiB tmpfs mounted for the test (root only, as the README's test command
//! runs); the upstream is a closed port, so every accepted message stays queued and is
//! retried every second, writing its delivery record each time.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::interop::*;

const SPOOL_MIB: u64 = 16;
const KEEP_MIB: u64 = 4;
const SENDERS: usize = 8;
const MESSAGE_BYTES: usize = 2_500_000;

/// A tmpfs at a path, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={mib}m,mode=0700"))
            .arg("tmpfs")
            .arg(at));
        assert!(out.status.success(), "mount tmpfs: {}", text(&out));
        Tmpfs(at.to_owned())
    }

    fn free_bytes(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs(3) writes only into the struct it is given; the path ends in NUL.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
        stat.f_bavail as u64 * stat.f_frsize as u64
    }

    /// What `during` returns, and the least free space seen while it ran (sampled every
    /// millisecond).
    fn least_free_during<T>(&self, during: impl FnOnce() -> T) -> (T, u64) {
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let sampler = s.spawn(|| {
                let mut least = u64::MAX;
                while !done.load(Ordering::SeqCst) {
                    least = least.min(self.free_bytes());
                    std::thread::sleep(Duration::from_millis(1));
                }
                least
            });
            let out = during();
            done.store(true, Ordering::SeqCst);
            (out, sampler.join().unwrap())
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `senders` devices at once (Python's smtplib), each sending one message of
/// `MESSAGE_BYTES`; each one's final reply (to `MAIL FROM` or to the data) as `code text`.
fn send_all(port: u16, mailbox: &str, senders: usize) -> Vec<String> {
    let script = "import smtplib,sys\n\
        body=('From: %s\\r\\nTo: %s\\r\\nSubject: disk %s\\r\\n\\r\\n' % (sys.argv[3], sys.argv[3], sys.argv[4])).encode() + (b'x' * 998 + b'\\r\\n') * (int(sys.argv[5]) // 1000)\n\
        s=smtplib.SMTP('127.0.0.1',int(sys.argv[1]),timeout=60)\n\
        s.login('device@example.com',sys.argv[2])\n\
        try:\n    s.sendmail(sys.argv[3],[sys.argv[3]],body)\n    print('250 queued')\n\
        except smtplib.SMTPSenderRefused as e:\n    print(e.smtp_code, e.smtp_error.decode())\n\
        except smtplib.SMTPDataError as e:\n    print(e.smtp_code, e.smtp_error.decode())\n";
    let children: Vec<Child> = (0..senders)
        .map(|i| {
            Command::new("python3")
                .args(["-c", script, &port.to_string(), LOCAL_PASSWORD, mailbox])
                .arg(i.to_string())
                .arg(MESSAGE_BYTES.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            format!("{}{}", text(&out).trim(), err.trim())
        })
        .collect()
}

#[test]
fn parallel_messages_stop_at_the_margin_and_the_spool_keeps_room_for_its_records() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting the test's tmpfs needs root (the README's test command runs as root)");
        return;
    }
    stack();
    let dir = tempfile::tempdir().unwrap();
    let spool = Tmpfs::mount(&dir.path().join("spool"), SPOOL_MIB);
    let mailbox = unique_user("disk-full");
    let rt = new_refresh_token(&mailbox);
    std::fs::write(dir.path().join("store.key"), STORE_KEY).unwrap();
    let (port, closed) = (free_port(), free_port());
    let toml = format!(
        "[listener.smtp]\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{closed}\"\nupstream_tls = \"none\"\nspool = true\n\n\
         [spool]\npath = \"{d}/spool\"\nmin_free_mb = {KEEP_MIB}\nmax_message_bytes = 3145728\nfirst_retry_secs = 1\n\n\
         [store]\npath = \"{d}/tokens.json\"\nkey_file = \"{d}/store.key\"\n\n[admin]\nenabled = false\n\n\
         [account.device]\nlogin = \"device@example.com\"\npassword_hash = \"{hash}\"\nmailbox = \"{mailbox}\"\n\
         provider = \"custom\"\ntoken_url = \"http://{IDP}/token\"\nclient_id = \"interop-client\"\nclient_secret = \"{CLIENT_SECRET}\"\nrefresh_token = \"{rt}\"\n",
        d = dir.path().display(),
        hash = hash_password(LOCAL_PASSWORD),
    );
    let (child, config, log) = spawn_relay(dir.path(), &toml, &[port]);
    let _relay = KillOnDrop(child);

    // One message alone fits; it stays queued and is retried every second from now on.
    assert_eq!(send_all(port, &mailbox, 1), ["250 queued"]);
    let (replies, least) = spool.least_free_during(|| send_all(port, &mailbox, SENDERS));
    let queued = 1 + replies.iter().filter(|r| r.starts_with("250")).count();
    let full = replies
        .iter()
        .filter(|r| r.starts_with("452 4.3.1"))
        .count();
    assert_eq!(
        queued - 1 + full,
        SENDERS,
        "every reply is 250 or 452 4.3.1: {replies:#?}"
    );
    assert!(
        full >= 1,
        "{SENDERS} messages of {MESSAGE_BYTES} bytes cannot all fit: {replies:#?}"
    );

    // The queued messages are retried every second: each retry writes a delivery record.
    std::thread::sleep(Duration::from_secs(4));
    let listed = text(&run(Command::new(env!("CARGO_BIN_EXE_authrelay"))
        .args(["queue", "list", "--json", "--config"])
        .arg(&config)));
    let in_queue = listed.lines().filter(|l| l.starts_with('{')).count();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        in_queue, queued,
        "every 250 is in the queue, nothing else: {listed}\n{said}"
    );
    // Refused at MAIL FROM or at the end of the data (which one depends on how the senders
    // interleave); either way the log says why.
    assert!(said.contains("the spool is full"), "{said}");
    assert!(!said.contains("could not record a delivery"), "{said}");
    assert!(!said.contains("message could not be spooled"), "{said}");
    // Parallel writers each check before they write: the margin can shrink by at most one
    // chunk (256 KiB and the writer's buffer) per sender, never to nothing.
    assert!(
        least >= 1 << 20,
        "{least} bytes left of the {KEEP_MIB} MiB margin\n{said}"
    );
    eprintln!(
        "{queued} queued, {full} refused with 452 4.3.1, at least {} KiB of {SPOOL_MIB} MiB free throughout",
        least >> 10
    );
}
