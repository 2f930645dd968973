//! `mqedge check`: DESIGN.md's example LB config is accepted; broken files are refused with
//! exit 1 and `file:line: what is wrong`.

mod common;

use std::process::Command;

use common::*;

fn check(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("check")
        .arg("-c")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn design_example_is_accepted() {
    let dir = TempDir::new("check-ok");
    let _pki = Pki::new(dir.path(), &[]);
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/lb.example.toml"
    ))
    .unwrap();
    let p = dir.write("lb.toml", &example);
    let (code, out, err) = check(&p);
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn broken_files_are_refused_with_file_line() {
    let dir = TempDir::new("check-bad");
    let base = "[[listener]]\nname = \"mqtt\"\nbind = \"127.0.0.1:1883\"\n";
    let cases = [
        ("unknown.toml", format!("{base}[lb]\nname = \"x\"\nworkerz = 2\n"), 6, "unknown field `workerz`"),
        ("duration.toml", format!("{base}[lb]\nconnect_timeout = \"5 seconds please\"\n"), 5, "invalid duration"),
        ("addr.toml", format!("{base}[[backend]]\nname = \"n\"\naddr = \"10.0.0.300:1883\"\n"), 6, "invalid backend address"),
        ("bind.toml", "[[listener]]\nname = \"mqtt\"\nbind = \"1883\"\n".to_string(), 3, "invalid address"),
        ("syntax.toml", format!("{base}[balance\n"), 4, ""),
        ("auth.toml", "[[listener]]\nname = \"s\"\nbind = \"127.0.0.1:8883\"\n[listener.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_auth = \"sometimes\"\n".to_string(), 7, "unknown variant `sometimes`"),
    ];
    for (name, text, line, what) in cases {
        let p = dir.write(name, &text);
        let (code, out, err) = check(&p);
        assert_eq!(code, 1, "{name}: stdout {out} stderr {err}");
        let first = err.lines().next().unwrap_or("");
        let want = format!("{}:{line}: ", p.display());
        assert!(
            first.starts_with(&want),
            "{name}: expected {want:?}…, got {err:?}"
        );
        assert!(
            first.contains(what),
            "{name}: expected {what:?} in {first:?}"
        );
    }
    // a missing file: exit 1, one line naming it
    let (code, _, err) = check(&dir.path().join("nope.toml"));
    assert_eq!(code, 1);
    assert!(
        err.contains("nope.toml") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn lb_refuses_to_start_on_a_bad_config_and_bad_arguments_exit_1() {
    let dir = TempDir::new("check-run");
    let p = dir.write("lb.toml", "[lb]\nbogus = true\n");
    let out = Command::new(bin())
        .args(["lb", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lb.toml:2: unknown field `bogus`"));
    let out = Command::new(bin()).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}
