//! The container image (Containerfile, deploy/image.sh; docs/deployment.md "The image"): built
//! with podman from this checkout's binary, it runs a broker as UID 10001 on a read-only root
//! with its data_dir on a volume, has no shell, stops cleanly on SIGTERM (`podman stop`), and a
//! second container on the same volume serves the session the first one queued for.
//!
//! Needs podman (and runc: crun refuses the hybrid cgroup layout of some CI hosts). `.ci/run`
//! installs both; outside CI (`CI` unset) the test says it skipped when podman is missing.
//! Podman's storage for the test is its own temporary directory (vfs driver), not
//! /var/lib/containers, removed with the image and containers the test made.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{mosquitto_pub, Proc, ScriptRun, TempDir};

/// `podman` with the test's own storage and the runtime that works on this host.
struct Podman {
    /// Holds `storage` (images, containers) and `run` (runroot); removed when the test ends.
    dir: TempDir,
    runtime: Option<&'static str>,
}

impl Podman {
    fn find() -> Option<Podman> {
        let found = ["/usr/bin/podman", "/usr/local/bin/podman"]
            .iter()
            .any(|p| Path::new(p).exists());
        if !found {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("podman is not installed: .ci/run installs it (apt podman runc)");
            }
            eprintln!("container_image: SKIPPED, podman is not installed (.ci/run installs it)");
            return None;
        }
        let runtime = ["/usr/bin/runc", "/usr/sbin/runc", "/usr/local/bin/runc"]
            .iter()
            .any(|p| Path::new(p).exists())
            .then_some("runc");
        Some(Podman {
            dir: TempDir::new("podman"),
            runtime,
        })
    }

    /// The global arguments every podman call takes.
    fn global(&self) -> Vec<String> {
        let mut a = vec![
            "--root".to_string(),
            self.dir.path().join("storage").display().to_string(),
            "--runroot".to_string(),
            self.dir.path().join("run").display().to_string(),
            "--storage-driver".to_string(),
            "vfs".to_string(),
        ];
        if let Some(r) = self.runtime {
            a.extend(["--runtime".to_string(), r.to_string()]);
        }
        a
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.args(self.global());
        c
    }

    fn run(&self, args: &[&str], timeout: Duration) -> ScriptRun {
        let mut c = self.cmd();
        c.args(args);
        ScriptRun::run(c, timeout)
    }
}

/// Removes the containers and the image the test made, whatever happened.
struct Cleanup<'a> {
    podman: &'a Podman,
    containers: Vec<String>,
    image: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self
                .podman
                .run(&["rm", "-f", "-t", "0", c], Duration::from_secs(30));
        }
        let _ = self
            .podman
            .run(&["rmi", "-f", &self.image], Duration::from_secs(30));
    }
}

/// `podman run` of the image as a broker with `cfg` at /etc/mqedge and `data` at
/// /var/lib/mqedge, on the host's network (the broker binds 127.0.0.1:0 and logs the port).
fn start_broker(podman: &Podman, name: &str, image: &str, cfg: &Path, data: &Path) -> Proc {
    let mut c = podman.cmd();
    c.args([
        "run",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
    ])
    // the runtime may not raise limits here; keep the ones the test runs with
    .args([
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
    ])
    .args(["--stop-timeout", "20"])
    .arg("-v")
    .arg(format!("{}:/etc/mqedge:ro", cfg.display()))
    .arg("-v")
    .arg(format!("{}:/var/lib/mqedge", data.display()))
    .args(["-e", "RUST_LOG=info", image])
    .args(["broker", "-c", "/etc/mqedge/broker.toml"]);
    let p = Proc::spawn(name, c);
    p.wait_log("admin listening", Duration::from_secs(60));
    p
}

fn mqtt_addr(p: &Proc) -> SocketAddr {
    p.addr_in_log("listener=mqtt")
}

#[test]
fn image_builds_runs_unprivileged_and_keeps_data_on_its_volume() {
    let Some(podman) = Podman::find() else {
        return;
    };
    let pid = std::process::id();
    let image = format!("localhost/mqedge-test:{pid}");
    let mut cleanup = Cleanup {
        podman: &podman,
        containers: Vec::new(),
        image: image.clone(),
    };

    // build: the script stages the binary and its libraries, podman builds the Containerfile
    let mut build = Command::new("bash");
    build
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/image.sh"))
        .args([
            "--binary",
            common::bin(),
            "--tag",
            &image,
            "--engine",
            "podman",
            "--",
        ])
        .args(podman.global());
    let built = ScriptRun::run(build, Duration::from_secs(300));
    assert_eq!(
        built.status,
        Some(0),
        "image build failed:\n{}",
        built.output
    );

    let cfg = TempDir::new("container-cfg");
    cfg.write(
        "broker.toml",
        "[node]\nname = \"c1\"\nadmin = \"127.0.0.1:0\"\ndata_dir = \"/var/lib/mqedge\"\n\n\
         [[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n[auth]\nallow_anonymous = true\n",
    );
    let data = TempDir::new("container-data");
    let chown = Command::new("chown")
        .args(["10001:10001", &data.path().display().to_string()])
        .status()
        .unwrap();
    assert!(chown.success(), "chown the data volume to 10001");

    let name1 = format!("mqedge-test-{pid}-a");
    cleanup.containers.push(name1.clone());
    let mut b1 = start_broker(&podman, &name1, &image, cfg.path(), data.path());
    let addr = mqtt_addr(&b1);
    let admin = b1.addr_in_log("admin listening");
    assert_eq!(common::http("GET", admin, "/healthz").0, 200);

    // no shell, and the process is not root
    let sh = podman.run(
        &["exec", &name1, "/bin/sh", "-c", "true"],
        Duration::from_secs(30),
    );
    assert_ne!(sh.status, Some(0), "the image has a shell:\n{}", sh.output);
    let top = podman.run(&["top", &name1, "user", "args"], Duration::from_secs(30));
    assert!(
        top.output.contains("10001") || top.output.contains("mqedge"),
        "the broker does not run as 10001:\n{}",
        top.output
    );

    // a persistent session (mosquitto_sub -c) goes offline; a QoS 1 message is queued for it
    let port = addr.port().to_string();
    // -d under stdbuf -oL: the SUBACK line is printed as it arrives
    let mut sub_cmd = Command::new(common::which("stdbuf"));
    sub_cmd
        .args(["-oL", &common::which("mosquitto_sub")])
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(["-i", "dev-1", "-c", "-q", "1", "-t", "fleet/#", "-v", "-d"]);
    let mut sub = Proc::spawn("sub", sub_cmd);
    sub.wait_log("SUBACK", Duration::from_secs(10));
    sub.signal("KILL");
    let _ = sub.wait_exit(Duration::from_secs(5));
    let pub1 = mosquitto_pub(
        "127.0.0.1",
        addr.port(),
        &["-q", "1", "-t", "fleet/a", "-m", "kept"],
    );
    assert_eq!(pub1.status, Some(0), "publish on {port}: {}", pub1.output);

    // SIGTERM through podman stop: a clean stop, the store flushed to the volume
    let stop = podman.run(&["stop", "-t", "20", &name1], Duration::from_secs(40));
    assert_eq!(stop.status, Some(0), "podman stop: {}", stop.output);
    assert!(
        b1.wait_exit(Duration::from_secs(30)).is_some(),
        "container 1 did not exit"
    );
    assert!(
        b1.logs().contains("stopped"),
        "no clean stop:\n{}",
        b1.logs()
    );
    assert!(
        data.path().join("mqedge.redb").exists(),
        "data_dir is not on the volume"
    );

    // a new container on the same volume still has the session and its queued message
    let name2 = format!("mqedge-test-{pid}-b");
    cleanup.containers.push(name2.clone());
    let b2 = start_broker(&podman, &name2, &image, cfg.path(), data.path());
    let addr2 = mqtt_addr(&b2);
    let mut again = Command::new(common::which("mosquitto_sub"));
    again
        .args(["-h", "127.0.0.1", "-p", &addr2.port().to_string()])
        .args(["-i", "dev-1", "-c", "-q", "1", "-t", "fleet/#", "-v"])
        .args(["-C", "1", "-W", "10"]);
    let got = ScriptRun::run(again, Duration::from_secs(15));
    assert_eq!(
        got.status,
        Some(0),
        "no queued message after restart: {}",
        got.output
    );
    assert!(got.output.contains("fleet/a kept"), "got {:?}", got.output);
    drop(b2);
    drop(cleanup);
}
