//! `mqedge certs --out DIR`: a dev CA, a server certificate and client certificates through
//! [`mqedge_shared::certs::generate`] (or, with `--node NAME`, node certificates through
//! [`mqedge_shared::certs::generate_nodes`]; with `--revoke NAME`, the directory's CRL through
//! [`mqedge_shared::certs::issue::revoke`]), one `wrote PATH` line per file.

use std::path::Path;
use std::process::ExitCode;

use mqedge_shared::certs::{CertError, CertOptions};

/// Exit 0 with the files written, or 1 with the reason (and, for an existing CA, the two flags
/// that resolve it).
pub fn run(out: &Path, nodes: &[String], revoke: &[String], opts: &CertOptions) -> ExitCode {
    let made = if !revoke.is_empty() {
        mqedge_shared::certs::issue::revoke(out, revoke).map(|f| vec![f])
    } else if nodes.is_empty() {
        mqedge_shared::certs::generate(out, opts)
    } else {
        mqedge_shared::certs::generate_nodes(out, nodes, opts)
    };
    match made {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mqedge certs: {}", error_chain(&e));
            if matches!(e, CertError::CaExists(_)) {
                eprintln!(
                    "mqedge certs: pass --reuse-ca to sign the new certificates with \
                     the existing CA, or --force to replace it"
                );
            }
            ExitCode::from(1)
        }
    }
}

/// One line with every cause, `outer: inner: root`, so a user sees why without a backtrace.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
