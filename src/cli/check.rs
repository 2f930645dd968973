//! `mqedge check -c FILE`: validates a config with exactly the loader the role runs (plus the
//! files a broker loads at start) and prints one `ok` line, or every `file:line: what` and
//! exit 1. The role is judged from the file's top-level tables.

use std::path::Path;
use std::process::ExitCode;

/// Which role a config file is for, judged by its top-level tables.
fn role_of(path: &Path) -> Result<&'static str, String> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read config file: {e}", path.display()))?;
    let t: toml::Table = match toml::from_str(&src) {
        Ok(t) => t,
        // let the role parser report the syntax error with its line
        Err(_) => return Ok("lb"),
    };
    let broker = ["node", "cluster", "auth", "limits", "shared_subscriptions"]
        .iter()
        .any(|k| t.contains_key(*k));
    let lb = ["lb", "backend", "balance", "health"]
        .iter()
        .any(|k| t.contains_key(*k));
    if broker && !lb {
        return Ok("broker");
    }
    if lb {
        return Ok("lb");
    }
    // only [[listener]]: whichever role accepts it
    if mqedge_lb::config::Config::load(path).is_err()
        && mqedge_broker::config::Config::load(path).is_ok()
    {
        Ok("broker")
    } else {
        Ok("lb")
    }
}

/// Exit 0 and the `ok` line, or 1 and the problems on stderr.
pub fn run(path: &Path) -> ExitCode {
    match role_of(path) {
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
        Ok("broker") => check_broker(path),
        Ok(_) => check_lb(path),
    }
}

fn check_broker(path: &Path) -> ExitCode {
    match mqedge_broker::config::Config::load(path) {
        // the password and ACL files are loaded (and checked) by the config itself
        Ok(c) => {
            println!(
                "{}: ok (broker config: node {}, {} listener(s))",
                path.display(),
                c.name,
                c.listeners.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn check_lb(path: &Path) -> ExitCode {
    match mqedge_lb::config::Config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok (lb config: {} listener(s), {} backend(s))",
                path.display(),
                c.listeners.len(),
                c.backends.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
