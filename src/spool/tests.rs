//! The spool's storage guarantees, through its public API.

use super::*;

fn envelope(id: &str) -> Envelope {
    Envelope {
        id: id.to_owned(),
        account: "scanner".into(),
        sender: "scanner@example.com".into(),
        recipients: vec!["a@example.com".into(), "b@example.com".into()],
        arrived: 1_790_000_000,
        client: "192.0.2.7".into(),
        bounce: false,
    }
}

async fn accept(spool: &Spool, body: &[u8]) -> String {
    let id = new_id();
    let mut m = spool.begin(&envelope(&id)).await.unwrap();
    // In pieces, as DATA arrives.
    for chunk in body.chunks(7000) {
        m.write(chunk).await.unwrap();
    }
    m.commit().await.unwrap();
    id
}

#[tokio::test]
async fn a_committed_message_is_queued_whole_with_its_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let id = accept(&spool, &body).await;
    let (env, bytes) = spool.read(&id).unwrap();
    assert_eq!(env, envelope(&id));
    assert_eq!(bytes, body);
    assert_eq!(spool.queued().unwrap(), vec![envelope(&id)]);
    assert!(fs::read_dir(dir.path().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn an_uncommitted_message_leaves_nothing_and_tmp_is_emptied_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut m = spool.begin(&envelope(&new_id())).await.unwrap();
    m.write(b"Subject: half\r\n").await.unwrap();
    drop(m);
    assert!(fs::read_dir(dir.path().join("tmp"))
        .unwrap()
        .next()
        .is_none());
    // A crash mid-message leaves its temporary file; the next open removes it.
    fs::write(dir.path().join("tmp").join(new_id()), b"partial").unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    assert!(fs::read_dir(dir.path().join("tmp"))
        .unwrap()
        .next()
        .is_none());
    assert!(spool.queued().unwrap().is_empty());
}

#[tokio::test]
async fn delivery_state_deferral_delivery_and_failure() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let (a, b) = (accept(&spool, b"one").await, accept(&spool, b"two").await);
    assert_eq!(spool.state(&a).unwrap(), DeliveryState::default());
    let deferred = DeliveryState {
        attempts: 1,
        next_try: 1_790_000_060,
        last_reply: "432 4.3.2 Concurrent connections limit exceeded".into(),
        unsure: true,
    };
    spool.defer(&a, &deferred).unwrap();
    assert_eq!(spool.state(&a).unwrap(), deferred);
    spool.delivered(&a).unwrap();
    assert!(spool.read(&a).is_err());
    assert_eq!(spool.state(&a).unwrap(), DeliveryState::default());
    spool.fail(&b).unwrap();
    assert!(spool.queued().unwrap().is_empty());
    assert!(dir.path().join("failed").join(&b).exists());
}

#[tokio::test]
async fn queue_ids_cannot_name_other_paths() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    for bad in ["../tokens.json", "", "a/b", "x.tmp"] {
        assert!(spool.read(bad).is_err(), "{bad}");
        assert!(spool.delivered(bad).is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_share_directory_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let spool = spool.clone();
            tokio::spawn(async move { accept(&spool, format!("message {i}").as_bytes()).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(spool.queued().unwrap().len(), 64);
    let syncs = spool.directory_syncs();
    assert!((1..=64).contains(&syncs), "{syncs}");
    println!("64 concurrent commits: {syncs} directory syncs");
}

#[test]
fn ids_sort_by_arrival_and_are_unique() {
    let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 1000);
    assert!(ids.iter().all(|id| checked_id(id).is_ok()));
}

#[test]
fn the_spool_is_private_and_one_that_others_can_enter_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
    // An empty directory made beforehand with a loose mode is made private.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    drop(Spool::inspect(dir.path()).unwrap());
    assert_eq!(mode(dir.path()), 0o700);
    for sub in ["tmp", "queue", "failed", "state"] {
        assert_eq!(mode(&dir.path().join(sub)), 0o700, "{sub}");
    }
    // One that holds a spool and that others can enter is refused, with the fix.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let e = Spool::inspect(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains(&format!("chmod 700 {}", dir.path().display())),
        "{e}"
    );
}

/// Finding 11 of issue 26: 300 recipients of 250 bytes made a header line over 64 KiB, and the
/// whole queue unreadable after a restart.
#[tokio::test]
async fn a_message_with_many_long_recipients_stays_readable_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = new_id();
    let mut e = envelope(&id);
    e.recipients = (0..500)
        .map(|i| format!("{}{i:03}@example.com", "r".repeat(238)))
        .collect();
    let mut m = spool.begin(&e).await.unwrap();
    m.write(b"Subject: many\r\n\r\nx\r\n").await.unwrap();
    m.commit().await.unwrap();
    let other = accept(&spool, b"Subject: other\r\n\r\ny\r\n").await;
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    let queued: Vec<String> = spool.queued().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(queued, vec![id.clone(), other]);
    let (read, body) = spool.read(&id).unwrap();
    assert_eq!(read.recipients.len(), 500);
    assert_eq!(body, b"Subject: many\r\n\r\nx\r\n");
    let (shown, head) = spool.show(&id).unwrap();
    assert_eq!(shown.recipients.len(), 500);
    assert_eq!(head, "Subject: many\r\n");
}

/// Finding 12: garbage, a truncated file, a symlink, a directory and a misnamed copy in
/// `queue/` are skipped (and never followed); the good message is still listed and read; a
/// directory in `tmp/` does not stop the start.
#[tokio::test]
async fn foreign_and_damaged_entries_never_stop_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let good = accept(&spool, b"Subject: good\r\n\r\nbody\r\n").await;
    drop(spool);
    let queue = dir.path().join("queue");
    let outside = dir.path().join("outside");
    let copy = fs::read(queue.join(&good)).unwrap();
    fs::write(&outside, &copy).unwrap();
    fs::write(queue.join(new_id()), b"garbage without a header line").unwrap();
    fs::write(queue.join(new_id()), &copy[..20]).unwrap();
    std::os::unix::fs::symlink(&outside, queue.join(new_id())).unwrap();
    fs::create_dir(queue.join(new_id())).unwrap();
    fs::write(queue.join(new_id()), &copy).unwrap();
    fs::create_dir(dir.path().join("tmp").join("left-behind")).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let queued: Vec<String> = spool.queued().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(queued, vec![good.clone()]);
    assert_eq!(
        spool.read(&good).unwrap().1,
        b"Subject: good\r\n\r\nbody\r\n"
    );
    let link = fs::read_dir(&queue)
        .unwrap()
        .flatten()
        .find(|e| e.file_type().unwrap().is_symlink())
        .unwrap();
    let id = link.file_name().into_string().unwrap();
    assert!(spool.read(&id).is_err(), "a symlink is never followed");
    assert!(spool.show(&id).is_err());
}

/// Planted links (issue 26: the spool attacked): symlinks and hard links at the names the
/// spool writes or reads (a state, the temporary name a state was once written under, a failed
/// message) are never followed or written through; at start, links and half-written states go.
/// Before, a deferral truncated and wrote whatever `state/.ID.tmp` pointed to, and a linked
/// state was read.
#[tokio::test]
async fn planted_links_are_never_followed_or_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("spool");
    let spool = Spool::open(&root).unwrap();
    let (a, b) = (
        accept(&spool, b"a\r\n").await,
        accept(&spool, b"b\r\n").await,
    );
    let state = root.join("state");
    let outside = dir.path().join("outside");
    let planted = br#"{"attempts":99,"next_try":99999999999,"last_reply":"planted"}"#;
    fs::write(&outside, planted).unwrap();
    std::os::unix::fs::symlink(&outside, state.join(format!(".{a}.tmp"))).unwrap();
    fs::hard_link(&outside, state.join(format!(".{b}.tmp"))).unwrap();
    std::os::unix::fs::symlink(&outside, state.join(&a)).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("failed").join(&b)).unwrap();

    assert_eq!(
        spool.state(&a).unwrap(),
        DeliveryState::default(),
        "not read through a link"
    );
    let deferred = DeliveryState {
        attempts: 1,
        next_try: 5,
        last_reply: "451 later".into(),
        unsure: false,
    };
    spool.defer(&a, &deferred).unwrap();
    spool.defer(&b, &deferred).unwrap();
    assert_eq!(spool.state(&a).unwrap(), deferred);
    spool.fail(&b).unwrap();
    assert_eq!(spool.retry_now(&b).unwrap(), DeliveryState::default());
    spool.delivered(&b).unwrap();
    assert_eq!(
        fs::read(&outside).unwrap(),
        planted,
        "nothing written outside the spool"
    );
    assert!(fs::symlink_metadata(state.join(&a)).unwrap().is_file());
    drop(spool);

    fs::write(state.join(format!(".{a}.0123456789ab.tmp")), b"{").unwrap();
    fs::write(state.join(new_id()), b"{}").unwrap();
    fs::remove_file(state.join(&a)).unwrap();
    std::os::unix::fs::symlink(&outside, state.join(&a)).unwrap();
    let _spool = Spool::open(&root).unwrap();
    let left: Vec<_> = fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(fs::read(&outside).unwrap(), planted);
}

/// A message deleted while it is being delivered (`authrelay queue delete` from another
/// process): each way an attempt ends says so, and leaves no state behind; a retry of a
/// message that is not there is refused instead of writing a state for it.
#[tokio::test]
async fn a_message_deleted_during_its_delivery_is_gone_for_every_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let not_queued = |r: Result<_, SpoolError>| matches!(r, Err(SpoolError::NotQueued { .. }));
    for end in 0..3 {
        let id = accept(&spool, b"x\r\n").await;
        spool.delete(&id).unwrap();
        let outcome = match end {
            0 => spool.delivered(&id),
            1 => spool.defer(&id, &DeliveryState::default()),
            _ => spool.fail(&id),
        };
        assert!(not_queued(outcome), "outcome {end}");
        assert!(not_queued(spool.retry_now(&id).map(|_| ())));
    }
    let states = fs::read_dir(dir.path().join("state")).unwrap().count();
    assert_eq!(states, 0);
}
