//! `mqedge certs --out DIR`: a dev CA, a server certificate and client certificates through
//! [`mqedge_shared::certs::generate`], one `wrote PATH` line per file.

use std::path::Path;
use std::process::ExitCode;

use mqedge_shared::certs::{CertError, CertOptions};

use super::error_chain;

/// Exit 0 with the files written, or 1 with the reason (and, for an existing CA, the two flags
/// that resolve it).
pub fn run(out: &Path, opts: &CertOptions) -> ExitCode {
    match mqedge_shared::certs::generate(out, opts) {
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
