//! The spool attacked as a local user would (issue 26, finding 18): under `umask 000` every
//! directory the spool makes is 0700 and every file it writes 0600, through a message's whole
//! life (received, deferred with its state, failed), so no other local user reads queued mail.

use authrelay::spool::{DeliveryState, Envelope, Spool};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn modes(dir: &Path, out: &mut Vec<(String, u32, bool)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        out.push((e.path().display().to_string(), mode, meta.is_dir()));
        if meta.is_dir() {
            modes(&e.path(), out);
        }
    }
}

#[tokio::test]
async fn under_umask_000_every_spool_file_and_directory_is_private() {
    // SAFETY: umask only changes this process's file-creation mask; this test binary has no
    // other test that creates files at the same time.
    unsafe { libc::umask(0) };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("spool");
    let spool = Spool::open(&root).unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = authrelay::spool::new_id();
        let envelope = Envelope {
            id: id.clone(),
            account: "scanner".into(),
            sender: "scanner@example.com".into(),
            recipients: vec!["a@example.com".into()],
            arrived: 1_790_000_000,
            client: "192.0.2.7".into(),
            bounce: false,
        };
        let mut m = spool.begin(&envelope).await.unwrap();
        m.write(format!("Subject: payslip {n}\r\n\r\nsalary\r\n").as_bytes())
            .await
            .unwrap();
        m.commit().await.unwrap();
        ids.push(id);
    }
    let state = DeliveryState {
        attempts: 1,
        next_try: 1,
        last_reply: "451 later".into(),
        unsure: false,
    };
    spool.defer(&ids[0], &state).unwrap();
    spool.defer(&ids[1], &state).unwrap();
    spool.fail(&ids[1]).unwrap();
    let mut all = vec![(
        root.display().to_string(),
        std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        true,
    )];
    modes(&root, &mut all);
    assert!(all.len() >= 8, "{all:?}");
    for (path, mode, is_dir) in &all {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{path} is {mode:o}");
    }
    println!(
        "umask 000: {} spool paths, directories 0700, files 0600",
        all.len()
    );
}
