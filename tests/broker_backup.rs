//! Backup and restore of `data_dir` (docs/operations.md "Backup and restore"): a copy of
//! `mqedge.redb` taken after a clean stop, or while the broker is frozen (what an atomic
//! filesystem snapshot of a running node sees), restores every acknowledged QoS 1 message and
//! the persistent sessions they are queued for, in a new data_dir, on a new broker.
//! The clients are Mosquitto's, not ours.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{mosquitto_pub, which, BrokerProc, Proc, ScriptRun, TempDir};

const MESSAGES: usize = 50;

fn config(dir: &TempDir, name: &str, data: &Path) -> std::path::PathBuf {
    dir.write(
        &format!("{name}.toml"),
        &format!(
            "[node]\nname = \"{name}\"\nadmin = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n\
             [[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n[auth]\nallow_anonymous = true\n",
            data.display()
        ),
    )
}

/// Subscribes `id` as a persistent session to `backup/#`, then leaves it offline.
fn offline_session(addr: SocketAddr, id: &str) {
    let mut cmd = Command::new(which("stdbuf"));
    cmd.args(["-oL", &which("mosquitto_sub")])
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-i", id, "-c", "-q", "1", "-t", "backup/#", "-d"]);
    let mut sub = Proc::spawn(id, cmd);
    sub.wait_log("SUBACK", Duration::from_secs(10));
    sub.signal("KILL");
    let _ = sub.wait_exit(Duration::from_secs(5));
}

/// Publishes `MESSAGES` QoS 1 messages; each mosquitto_pub exits 0 only after its PUBACK.
fn publish_all(addr: SocketAddr) {
    for i in 0..MESSAGES {
        let m = format!("m{i}");
        let run = mosquitto_pub(
            "127.0.0.1",
            addr.port(),
            &["-q", "1", "-t", "backup/x", "-m", &m],
        );
        assert_eq!(run.status, Some(0), "publish {i}: {}", run.output);
    }
}

/// Resumes `id` and counts the distinct messages it gets; returns how many of m0..m49 are missing.
fn lost_after_resume(addr: SocketAddr, id: &str) -> usize {
    let mut cmd = Command::new(which("mosquitto_sub"));
    cmd.args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-i", id, "-c", "-q", "1", "-t", "backup/#"])
        .args(["-C", &MESSAGES.to_string(), "-W", "10"]);
    let got = ScriptRun::run(cmd, Duration::from_secs(15));
    let seen: std::collections::HashSet<&str> = got.output.lines().collect();
    (0..MESSAGES)
        .filter(|i| !seen.contains(format!("m{i}").as_str()))
        .count()
}

fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("mqedge.redb"), to.join("mqedge.redb")).unwrap();
}

#[test]
fn a_copy_after_a_clean_stop_restores_every_acknowledged_message() {
    let dir = TempDir::new("backup-stop");
    let live = dir.path().join("live");
    let mut b = BrokerProc::start(&config(&dir, "b1", &live));
    let addr = b.addr();
    offline_session(addr, "dev-stop");
    publish_all(addr);
    b.proc.signal("TERM");
    assert!(
        b.proc.wait_exit(Duration::from_secs(20)).is_some(),
        "no clean stop"
    );

    // the backup is restored into a different data_dir, on a different broker
    let restored = dir.path().join("restored");
    copy_store(&live, &restored);
    std::fs::remove_dir_all(&live).unwrap();
    let b2 = BrokerProc::start(&config(&dir, "b2", &restored));
    assert_eq!(
        lost_after_resume(b2.addr(), "dev-stop"),
        0,
        "acknowledged messages lost"
    );
}

#[test]
fn a_copy_of_a_frozen_running_broker_is_a_crash_consistent_backup() {
    let dir = TempDir::new("backup-frozen");
    let live = dir.path().join("live");
    let mut b = BrokerProc::start(&config(&dir, "f1", &live));
    let addr = b.addr();
    offline_session(addr, "dev-frozen");
    publish_all(addr);

    // SIGSTOP: nothing moves while the file is copied, as under an atomic volume snapshot
    b.proc.signal("STOP");
    let snapshot = dir.path().join("snapshot");
    copy_store(&live, &snapshot);
    b.proc.signal("CONT");
    // the original keeps serving: one more acknowledged publish after the snapshot
    let run = mosquitto_pub(
        "127.0.0.1",
        addr.port(),
        &["-q", "1", "-t", "backup/x", "-m", "late"],
    );
    assert_eq!(
        run.status,
        Some(0),
        "the broker did not resume after the snapshot"
    );
    b.kill9();

    let b2 = BrokerProc::start(&config(&dir, "f2", &snapshot));
    assert_eq!(
        lost_after_resume(b2.addr(), "dev-frozen"),
        0,
        "acknowledged messages lost"
    );
}
