//! The password file: `user:hash` lines with argon2id PHC hashes, parsed into a
//! [`PasswordFile`] that verifies CONNECT passwords in constant-ish time, and written by
//! [`set_user`] (`mqedge passwd`) atomically. Imports only `error`.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::error::{located, read_file, AuthError};

/// argon2id cost used for new hashes: 19 MiB, 2 passes, 1 lane. This is OWASP's minimum
/// recommendation and argon2 0.5's default, pinned here so a crate upgrade cannot silently
/// change how long a CONNECT takes. Verification always uses the cost stored in each hash.
const M_COST_KIB: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

/// A valid hash with the same cost as [`hash_password`] produces (of the password
/// `unknown-user`; knowing it grants nothing, and the tests use it to prove that). Unknown users
/// are verified against it so that "no such user" and "wrong password" take about the same time
/// and a client cannot enumerate usernames by timing CONNECTs.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$6m+0B4lx0uQZlskbGw7R1g$HFZIiU7vuGOm7WZR9AAUkFzAj3KaS/JQKLMU0tt2jDI";

fn hasher() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password for the password file: argon2id PHC string with a fresh 16-byte salt from
/// the OS. Used by `mqedge passwd`; a hash verifies in well under 50 ms in a release build.
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| AuthError::Hash(format!("no random salt: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    let hash = hasher()?
        .hash_password(password, &salt)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the argon2 PHC string `stored`; `None` (no such user) is `false`
/// after verifying against a dummy hash of the same cost, so both answers take as long. Also
/// used for the hashes `[auth.postgres]` holds.
pub fn verify_hash(stored: Option<&str>, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(stored.unwrap_or(DUMMY_HASH)) else {
        return false;
    };
    let ok = Argon2::default().verify_password(password, &parsed).is_ok();
    stored.is_some() && ok
}

/// Checks that `hash` is a complete argon2 PHC string that [`PasswordFile::verify`] can use.
fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| e.to_string())?;
    Algorithm::try_from(parsed.algorithm).map_err(|e| e.to_string())?;
    Params::try_from(&parsed).map_err(|e| e.to_string())?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("salt or hash output missing".into());
    }
    Ok(())
}

/// Why a username cannot be stored in a password file, if it cannot: the format is
/// `user:hash` per trimmed line, so ':' and line breaks would change the meaning, a leading '#'
/// would make the line a comment, and outer whitespace would be trimmed away.
fn username_problem(user: &str) -> Option<&'static str> {
    if user.is_empty() {
        Some("is empty")
    } else if user.contains(':') {
        Some("contains ':'")
    } else if user.contains(['\n', '\r']) {
        Some("contains a line break")
    } else if user.starts_with('#') {
        Some("starts with '#' (it would read as a comment)")
    } else if user.trim() != user {
        Some("starts or ends with whitespace")
    } else {
        None
    }
}

/// What one password-file line holds.
enum PwLine<'a> {
    /// Blank or `# comment`.
    Skip,
    /// `user:hash` (not yet validated).
    Entry(&'a str, &'a str),
    /// No ':' on a non-comment line.
    NoColon,
}

fn split_pw_line(line: &str) -> PwLine<'_> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        PwLine::Skip
    } else if let Some((user, hash)) = t.split_once(':') {
        PwLine::Entry(user, hash)
    } else {
        PwLine::NoColon
    }
}

/// The users allowed to log in with a password, loaded from `[auth] password_file`.
///
/// `user:hash` lines; hash is an argon2 PHC string (`$argon2id$v=19$...`). Blank lines and `#`
/// comments allowed. A line without ':', with a hash that is not a valid PHC string, or naming a
/// user already defined is a Config error at its line. `Debug` shows usernames, never hashes.
#[derive(Clone, Default)]
pub struct PasswordFile {
    /// username → PHC string, each checked by [`check_hash`] at parse time.
    users: HashMap<String, String>,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&str> = self.users.keys().map(String::as_str).collect();
        users.sort_unstable();
        f.debug_struct("PasswordFile")
            .field("users", &users)
            .finish()
    }
}

impl PasswordFile {
    /// Reads and parses the password file at `path` (errors name the path as given).
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = read_file(path)?;
        let file = Self::parse(&path.display().to_string(), &text)?;
        warn_if_world_readable(path);
        tracing::debug!(path = %path.display(), users = file.len(), "password file loaded");
        Ok(file)
    }

    /// Parses password-file `text`; `file` is only used to name it in errors. Stops at the
    /// first bad line.
    pub fn parse(file: &str, text: &str) -> Result<Self, AuthError> {
        let mut users = HashMap::new();
        let mut first_line: HashMap<&str, usize> = HashMap::new();
        for (idx, line) in text.lines().enumerate() {
            let n = idx + 1;
            let (user, hash) = match split_pw_line(line) {
                PwLine::Skip => continue,
                PwLine::NoColon => {
                    return Err(located(file, Some(n), "expected `user:hash`, found no ':'"))
                }
                PwLine::Entry(user, hash) => (user, hash),
            };
            if let Some(why) = username_problem(user) {
                return Err(located(
                    file,
                    Some(n),
                    format!("invalid username {user:?}: it {why}"),
                ));
            }
            if let Err(why) = check_hash(hash) {
                return Err(located(
                    file,
                    Some(n),
                    format!(
                        "user {user:?}: the hash is not an argon2 PHC string \
                         ($argon2id$v=19$...): {why}"
                    ),
                ));
            }
            if let Some(prev) = first_line.insert(user, n) {
                return Err(located(
                    file,
                    Some(n),
                    format!("user {user:?} is already defined at line {prev}"),
                ));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        Ok(PasswordFile { users })
    }

    /// Whether `password` is right for `user`, through argon2 with the cost stored in the hash.
    /// An unknown user is `false` after verifying against a dummy hash of the same cost, so the
    /// answer takes about as long either way (usernames cannot be probed by timing). The final
    /// comparison inside argon2 is constant-time.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        verify_hash(self.users.get(user).map(String::as_str), password)
    }

    /// How many users the file defines (for logs and metrics).
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file defines no users at all (then no password can succeed).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(unix)]
fn warn_if_world_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                path = %path.display(),
                "password file is world-readable; `chmod 600` it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_world_readable(_path: &Path) {}

/// Adds or replaces USER in the password file at `path` — what `mqedge passwd -f FILE USER`
/// does. Other lines (comments too) keep their text and order; a new user is appended. A missing
/// file is created with mode 0600; an existing file keeps its permissions. The new file is
/// written beside the old one and renamed over it, so a crash leaves the old file or the new one,
/// never half of one; if the result would not load (the file already had a bad line), nothing
/// is written and that line's error is returned.
///
/// Usernames may not be empty, contain ':' or line breaks, start with '#', or have outer
/// whitespace (a Config error with no line number).
pub fn set_user(path: &Path, user: &str, password: &[u8]) -> Result<(), AuthError> {
    let name = path.display().to_string();
    if let Some(why) = username_problem(user) {
        return Err(located(
            &name,
            None,
            format!("invalid username {user:?}: it {why}"),
        ));
    }
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(AuthError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let entry = format!("{user}:{}", hash_password(password)?);
    let mut out = String::new();
    let mut replaced = false;
    for line in existing.as_deref().unwrap_or("").lines() {
        match split_pw_line(line) {
            PwLine::Entry(u, _) if u == user => {
                // A duplicate would be rejected by `parse` below; replace only the first.
                if !replaced {
                    out.push_str(&entry);
                    out.push('\n');
                    replaced = true;
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if !replaced {
        out.push_str(&entry);
        out.push('\n');
    }
    PasswordFile::parse(&name, &out)?;
    write_replacing(path, existing.is_some(), out.as_bytes())
}

/// Writes `data` to a temporary file beside `path` and renames it over `path`. A new file gets
/// mode 0600; an existing one's permissions are copied. A symlinked `path` is followed, so the
/// link stays and its target is replaced.
fn write_replacing(path: &Path, exists: bool, data: &[u8]) -> Result<(), AuthError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| AuthError::Io { path: p, source }
    };
    let target = if exists {
        fs::canonicalize(path).map_err(io_err(path))?
    } else {
        path.to_path_buf()
    };
    let file_name = target.file_name().ok_or_else(|| AuthError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = target.with_file_name(tmp_name);

    let result = (|| {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        if exists {
            let perms = fs::metadata(&target).map_err(io_err(path))?.permissions();
            f.set_permissions(perms).map_err(io_err(&tmp))?;
        }
        f.write_all(data).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &target).map_err(io_err(path))
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist if opening it failed.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::auth::Acl;
    use std::time::{Duration, Instant};

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("mqedge-auth-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    pub(in crate::auth) fn config_line(err: AuthError) -> Option<usize> {
        match err {
            AuthError::Config(l) => l.line,
            other => panic!("expected a Config error, got {other}"),
        }
    }

    #[test]
    fn password_round_trip() {
        let hash = hash_password(b"s3cret").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let pw = PasswordFile::parse("passwd", &format!("# users\n\nalice:{hash}\n")).unwrap();
        assert_eq!(pw.len(), 1);
        assert!(!pw.is_empty());
        assert!(pw.verify("alice", b"s3cret"));
        assert!(!pw.verify("alice", b"s3cret "));
        assert!(!pw.verify("alice", b""));
        assert!(!pw.verify("bob", b"s3cret"));
        // The dummy hash behind unknown users verifies, yet the answer must stay false.
        assert!(!pw.verify("bob", b"unknown-user"));
        assert!(!format!("{pw:?}").contains("argon2"), "Debug leaks hashes");
    }

    #[test]
    fn salts_differ() {
        assert_ne!(hash_password(b"x").unwrap(), hash_password(b"x").unwrap());
    }

    #[test]
    fn dummy_hash_has_the_cost_of_new_hashes() {
        check_hash(DUMMY_HASH).unwrap();
        let known = PasswordFile::parse("passwd", &format!("u:{DUMMY_HASH}")).unwrap();
        assert!(known.verify("u", b"unknown-user"));
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let fresh = hash_password(b"x").unwrap();
        let fresh = PasswordHash::new(&fresh).unwrap();
        assert_eq!(dummy.algorithm, fresh.algorithm);
        assert_eq!(
            Params::try_from(&dummy).unwrap(),
            Params::try_from(&fresh).unwrap()
        );
    }

    /// One verification at the default cost must stay well under 2 s even in a debug build, or
    /// every test that logs in gets slow. Best of three tries, so a busy machine does not fail
    /// it.
    #[test]
    fn verify_is_fast_enough_for_debug_tests() {
        let pw = PasswordFile::parse("passwd", &format!("u:{DUMMY_HASH}")).unwrap();
        for (user, password, expected) in
            [("u", &b"unknown-user"[..], true), ("nobody", b"x", false)]
        {
            let limit = Duration::from_secs(2);
            let mut best = Duration::MAX;
            for _ in 0..3 {
                let start = Instant::now();
                assert_eq!(pw.verify(user, password), expected);
                best = best.min(start.elapsed());
                if best < limit {
                    break;
                }
            }
            assert!(best < limit, "{user}: verify took {best:?}");
        }
    }

    #[test]
    fn password_parse_errors_carry_the_line() {
        let good = DUMMY_HASH;
        let cases = [
            (format!("# c\n\nalice:{good}\nbob\n"), 4),
            (format!("alice:{good}\nbob:plaintext\n"), 2),
            (format!("\n\n:{good}\n"), 3),
            (format!("alice:{good}\n# again\nalice:{good}\n"), 3),
            ("x:$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA\n".to_string(), 1),
            ("x:$argon2id$v=19$m=19456,t=2,p=1\n".to_string(), 1),
            (format!("ok:{good}\nalice :{good}\n"), 2),
        ];
        for (text, line) in cases {
            let err = PasswordFile::parse("passwd", &text).unwrap_err();
            let shown = err.to_string();
            assert!(shown.starts_with(&format!("passwd:{line}: ")), "{shown}");
            assert_eq!(config_line(err), Some(line), "{text}");
        }
    }

    #[test]
    fn load_reports_missing_file_with_its_path() {
        let dir = TempDir::new("missing");
        let path = dir.0.join("nope");
        let err = PasswordFile::load(&path).unwrap_err();
        assert!(matches!(err, AuthError::Io { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(matches!(Acl::load(&path), Err(AuthError::Io { .. })));
    }

    #[test]
    fn set_user_adds_and_replaces_keeping_other_lines() {
        let dir = TempDir::new("set-user");
        let path = dir.0.join("passwd");
        set_user(&path, "alice", b"one").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("alice:$argon2id$"), "{text}");

        let mut text = format!("# operators\n{text}\n# devices\n");
        fs::write(&path, &text).unwrap();
        set_user(&path, "bob", b"two").unwrap();
        text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(lines[0], "# operators");
        assert!(lines[1].starts_with("alice:"));
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "# devices");
        assert!(lines[4].starts_with("bob:"));
        let alice_before = lines[1].to_string();

        set_user(&path, "alice", b"three").unwrap();
        let after = fs::read_to_string(&path).unwrap();
        let after_lines: Vec<&str> = after.lines().collect();
        assert_eq!(after_lines.len(), 5, "{after}");
        assert_eq!(after_lines[0], "# operators");
        assert!(after_lines[1].starts_with("alice:"));
        assert_ne!(after_lines[1], alice_before);
        assert_eq!(after_lines[3], "# devices");
        assert_eq!(after_lines[4], lines[4], "bob must be untouched");

        let pw = PasswordFile::load(&path).unwrap();
        assert_eq!(pw.len(), 2);
        assert!(pw.verify("alice", b"three"));
        assert!(!pw.verify("alice", b"one"));
        assert!(pw.verify("bob", b"two"));
        let leftovers = fs::read_dir(&dir.0).unwrap().count();
        assert_eq!(leftovers, 1, "temporary file left behind");
    }

    #[test]
    fn set_user_rejects_bad_usernames_and_broken_files() {
        let dir = TempDir::new("bad-user");
        let path = dir.0.join("passwd");
        for bad in ["", "a:b", "a\nb", "a\rb", "#x", " x", "x\t"] {
            let err = set_user(&path, bad, b"pw").unwrap_err();
            match err {
                AuthError::Config(l) => assert_eq!(l.line, None, "{bad:?}"),
                other => panic!("{bad:?}: {other}"),
            }
        }
        assert!(!path.exists(), "nothing may be written for a bad username");

        fs::write(&path, "# ok\ngarbage\n").unwrap();
        let err = set_user(&path, "alice", b"pw").unwrap_err();
        assert_eq!(config_line(err), Some(2));
        assert_eq!(fs::read_to_string(&path).unwrap(), "# ok\ngarbage\n");
    }

    #[cfg(unix)]
    #[test]
    fn set_user_creates_the_file_with_mode_0600_and_keeps_an_existing_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("mode");
        let path = dir.0.join("passwd");
        set_user(&path, "alice", b"pw").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        set_user(&path, "bob", b"pw").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}
