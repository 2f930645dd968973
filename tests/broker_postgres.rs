//! Users and ACL rows in PostgreSQL (`[auth.postgres]`, docs/operations.md "Users and ACL in
//! PostgreSQL"), over real sockets against a real PostgreSQL the test starts (initdb and
//! pg_ctl in a temporary directory; as root, run as the `postgres` user, else `nobody`): a
//! CONNECT's password is checked against the argon2 hash in `mqedge_users` (users not there
//! fall back to the password file), PUBLISHes and SUBSCRIBE filters must be granted by a row
//! of `mqedge_acl` (v5 0x87, 3.1.1 SUBACK 0x80), answers are cached, and a database that
//! stopped is handled as `on_unavailable` says. Skipped with a message only where the
//! PostgreSQL binaries are absent and `CI` is not set; in CI they must be there (.ci/run
//! installs Debian's `postgresql`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{free_port, http, metric, parse_prometheus, tcp, InProcBroker, Raw, TempDir};
use mqedge_protocol::{Packet, Version};
use tokio::net::TcpStream;

const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Where initdb and pg_ctl are: Debian's versioned directory (newest first), else `PATH`.
fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    dirs.sort();
    if let Some(d) = dirs.pop() {
        return Some(d);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.parent()
        .filter(|d| d.join("pg_ctl").is_file())
        .map(Path::to_path_buf)
}

/// A PostgreSQL server in a temporary directory, stopped on drop.
struct Pg {
    bin: PathBuf,
    dir: TempDir,
    /// As root: the user postgres runs as.
    user: Option<&'static str>,
    port: u16,
}

impl Pg {
    /// `None` (with a message) where the binaries are absent outside CI.
    fn start() -> Option<Pg> {
        let Some(bin) = pg_bin() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL binaries not found in CI: .ci/run installs Debian's postgresql"
            );
            eprintln!(
                "SKIPPED: no PostgreSQL binaries (initdb, pg_ctl); apt-get install postgresql"
            );
            return None;
        };
        let dir = TempDir::new("pg");
        let root = nix_is_root();
        let user = root.then(|| {
            let has = |u: &str| {
                Command::new("id")
                    .arg("-u")
                    .arg(u)
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            if has("postgres") {
                "postgres"
            } else {
                "nobody"
            }
        });
        if let Some(u) = user {
            let ok = Command::new("chown")
                .arg("-R")
                .arg(u)
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown {u}");
        }
        let pg = Pg {
            bin,
            dir,
            user,
            port: free_port(),
        };
        let data = pg.dir.path().join("data");
        pg.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "mqedge".as_ref(),
                "--no-sync".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
            ],
        );
        pg.ctl("start");
        Some(pg)
    }

    fn run(&self, prog: &str, args: &[&std::ffi::OsStr]) {
        let exe = self.bin.join(prog);
        let mut cmd = match self.user {
            Some(u) => {
                // util-linux's, in /usr/sbin (not on every user's PATH)
                let runuser = ["/usr/sbin/runuser", "/sbin/runuser"]
                    .into_iter()
                    .find(|p| Path::new(p).is_file())
                    .unwrap_or("runuser");
                let mut c = Command::new(runuser);
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{prog}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ctl(&self, what: &str) {
        let d = self.dir.path();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -F",
            self.port,
            d.display()
        );
        let data = d.join("data");
        let log = d.join("log");
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "-D".as_ref(),
            data.as_os_str(),
            "-l".as_ref(),
            log.as_os_str(),
            "-w".as_ref(),
            "-t".as_ref(),
            "30".as_ref(),
            "-o".as_ref(),
            opts.as_ref(),
        ];
        if what == "stop" {
            args.push(std::ffi::OsStr::new("-m"));
            args.push(std::ffi::OsStr::new("immediate"));
        }
        args.push(what.as_ref());
        self.run("pg_ctl", &args);
    }

    fn url(&self) -> String {
        format!("postgresql://mqedge@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        if data.join("postmaster.pid").exists() {
            self.ctl("stop");
        }
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The schema of docs/operations.md, a user and its rows.
async fn fill(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test's postgres");
    tokio::spawn(conn);
    c.batch_execute(mqedge_broker::auth::postgres::SCHEMA)
        .await
        .unwrap();
    let hash = mqedge_broker::auth::hash_password(b"alice-pw").unwrap();
    c.execute(
        "INSERT INTO mqedge_users (username, password_hash) VALUES ('alice', $1)",
        &[&hash],
    )
    .await
    .unwrap();
    c.batch_execute(
        "INSERT INTO mqedge_acl (username, topic_filter, action) VALUES
           ('alice', 'fleet/alice/#', 'publish'),
           ('alice', 'fleet/#', 'subscribe'),
           ('*', 'public/#', 'all');",
    )
    .await
    .unwrap();
    c
}

fn broker(dir: &TempDir, name: &str, url: &str, on_unavailable: &str) -> InProcBroker {
    let hash = mqedge_broker::auth::hash_password(b"bob-pw").unwrap();
    dir.write("passwd", &format!("bob:{hash}\n"));
    let cfg = dir.write(
        &format!("{name}.toml"),
        &format!(
            "[node]\nname = \"{name}\"\nadmin = \"127.0.0.1:0\"\n\n\
             [[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
             [auth]\nallow_anonymous = true\npassword_file = \"passwd\"\n\n\
             [auth.postgres]\nurl = \"{url}\"\ntimeout = \"1s\"\ncache_ttl = \"30s\"\n\
             on_unavailable = \"{on_unavailable}\"\n"
        ),
    );
    InProcBroker::start(&cfg)
}

async fn connect(
    b: &InProcBroker,
    v: Version,
    id: &str,
    user: Option<(&str, &str)>,
) -> (u8, Raw<TcpStream>) {
    let mut c = Raw::new(tcp(b.addr()).await, v);
    let code = c
        .connect_with(id, true, 30, None, user, Default::default())
        .await
        .code;
    (code, c)
}

async fn puback(c: &mut Raw<TcpStream>, topic: &str, pid: u16) -> u8 {
    c.publish(topic, b"x", 1, Some(pid), false).await;
    loop {
        match c.recv(Duration::from_secs(5)).await {
            Some(Packet::PubAck(a)) if a.packet_id == pid => return a.code,
            Some(_) => continue,
            None => panic!("no PUBACK for {topic}"),
        }
    }
}

fn results(b: &InProcBroker, labels: &[&str]) -> f64 {
    let m = parse_prometheus(&http("GET", b.admin(), "/metrics").1);
    metric(&m, "mqedge_broker_auth_postgres_results_total", labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_acl_rows_come_from_postgres() {
    let Some(pg) = Pg::start() else { return };
    let run = async {
        let db = fill(&pg.url()).await;
        let dir = TempDir::new("pg-broker");
        let b = broker(&dir, "pg1", &pg.url(), "deny");
        let alice = Some(("alice", "alice-pw"));

        // CONNECT: the database's hash decides; a user not there falls back to the file
        assert_eq!(
            connect(&b, Version::V5, "a0", Some(("alice", "nope")))
                .await
                .0,
            0x86
        );
        let (code, mut a) = connect(&b, Version::V5, "a1", alice).await;
        assert_eq!(code, 0);
        assert_eq!(
            connect(&b, Version::V5, "b1", Some(("bob", "bob-pw")))
                .await
                .0,
            0
        );
        assert_eq!(
            connect(&b, Version::V5, "e1", Some(("eve", "x"))).await.0,
            0x86
        );

        // the rows grant: alice publishes under fleet/alice/, subscribes under fleet/
        assert_eq!(puback(&mut a, "fleet/alice/t", 1).await, 0);
        assert_eq!(puback(&mut a, "fleet/bob/t", 2).await, 0x87);
        assert_eq!(
            puback(&mut a, "public/news", 3).await,
            0,
            "the '*' rows apply to alice too"
        );
        assert_eq!(
            a.subscribe(4, &[("fleet/+/t", 1), ("other/#", 1), ("#", 1)])
                .await,
            vec![1, 0x87, 0x87]
        );
        let (_, mut a3) = connect(&b, Version::V311, "a3", alice).await;
        assert_eq!(
            a3.subscribe(1, &[("other/#", 0), ("fleet/#", 0)]).await,
            vec![0x80, 0]
        );
        // 3.1.1: a refused publish is acknowledged and dropped, as an ACL file deny is
        assert_eq!(puback(&mut a3, "fleet/bob/t", 2).await, 0);
        // anonymous clients get the '*' rows only
        let (code, mut anon) = connect(&b, Version::V5, "n1", None).await;
        assert_eq!(code, 0);
        assert_eq!(puback(&mut anon, "public/x", 1).await, 0);
        assert_eq!(puback(&mut anon, "fleet/alice/t", 2).await, 0x87);

        // cached: a row deleted now still grants until cache_ttl; the database is not asked
        db.batch_execute("DELETE FROM mqedge_acl WHERE username = 'alice'")
            .await
            .unwrap();
        let asked = results(&b, &["acl", "database"]);
        assert_eq!(puback(&mut a, "fleet/alice/t", 5).await, 0);
        assert_eq!(results(&b, &["acl", "database"]), asked);
        assert!(results(&b, &["acl", "\"allow\"", "cache"]) >= 1.0);
        // alice's hash was read once, then taken from the cache
        assert_eq!(results(&b, &["user", "found", "database"]), 1.0);
        assert_eq!(results(&b, &["user", "found", "cache"]), 2.0);

        // the database stops: a user it never answered for is refused (0x88), a cached one
        // still gets in; ACL rows not cached are refused with 0x80
        drop(db);
        pg.ctl("stop");
        assert_eq!(
            connect(&b, Version::V5, "c1", Some(("carol", "x"))).await.0,
            0x88
        );
        assert_eq!(connect(&b, Version::V5, "a4", alice).await.0, 0);
        let (_, mut bob) = connect(&b, Version::V5, "b2", Some(("bob", "bob-pw"))).await;
        assert_eq!(bob.subscribe(1, &[("public/#", 0)]).await, vec![0x80]);
        assert!(results(&b, &["user", "unavailable"]) >= 1.0);
        assert!(results(&b, &["acl", "unavailable"]) >= 1.0);

        // on_unavailable = "local": the password file decides, the ACL rows are skipped
        let local = broker(&dir, "pg2", &pg.url(), "local");
        assert_eq!(
            connect(&local, Version::V5, "b3", Some(("bob", "bob-pw")))
                .await
                .0,
            0
        );
        assert_eq!(
            connect(&local, Version::V5, "c2", Some(("carol", "x")))
                .await
                .0,
            0x86
        );
        let (_, mut bob) = connect(&local, Version::V5, "b4", Some(("bob", "bob-pw"))).await;
        assert_eq!(bob.subscribe(1, &[("public/#", 0)]).await, vec![0]);
    };
    tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("in time");
}

#[test]
fn a_bad_database_url_is_refused_with_its_line() {
    let src = "[[listener]]\nbind = \"127.0.0.1:1883\"\n[auth]\nallow_anonymous = true\n\
               [auth.postgres]\nurl = \"postgresql://mqedge@db:5432/mqedge?sslmode=bogus\"\n";
    let e = mqedge_broker::config::Config::parse(Path::new("node.toml"), src)
        .unwrap_err()
        .to_string();
    assert!(e.contains("node.toml:6: auth.postgres url"), "{e}");
}
