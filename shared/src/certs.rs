//! Dev and test certificates (rcgen): a throwaway CA, a server certificate for the local host and
//! client certificates for mTLS, so `mqedge certs`, `mqedge up` and the tests can run TLS end to
//! end without openssl or a real PKI. Nothing here is meant for production keys.
//!
//! Everything is ECDSA P-256 in PEM. The CA may only sign leaves (path length 0); the server
//! certificate covers `localhost`, `127.0.0.1` and `::1` plus any extra names; client
//! certificates carry the `clientAuth` usage so a WebPKI client verifier accepts them.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use time::{Duration, OffsetDateTime};

pub mod issue;

/// Subject CN of the dev CA.
const CA_CN: &str = "mqedge dev CA";
/// Subject CN of the server certificate.
const SERVER_CN: &str = "localhost";
/// CN used when no client CN is asked for; written as `client.pem`/`client.key`.
const DEFAULT_CLIENT_CN: &str = "dev-client";
/// File stem for the default client certificate.
const DEFAULT_CLIENT_STEM: &str = "client";
/// Stems `generate` writes itself: a client CN equal to one of them (ignoring case, for
/// case-insensitive file systems) would overwrite the CA or server files.
const RESERVED_STEMS: [&str; 2] = ["ca", "server"];
/// CA lifetime: ten years (counted from the back-dated start).
const CA_VALID_DAYS: i64 = 3652;
/// Server and client certificate lifetime: two years.
const LEAF_VALID_DAYS: i64 = 730;

/// What to generate, so the `mqedge certs` flags map one to one onto [`generate`].
#[derive(Debug, Clone, Default)]
pub struct CertOptions {
    /// Extra subject alternative names for the server cert (DNS names or IP literals), beyond
    /// localhost and 127.0.0.1.
    pub sans: Vec<String>,
    /// One client certificate per CN; empty => a single "dev-client" cert written as
    /// client.pem/client.key.
    pub client_cns: Vec<String>,
    /// Keep existing CA files in the directory (reuse ca.pem/ca.key if both exist) instead of
    /// making a new CA, so clients that already trust it keep working.
    pub reuse_ca: bool,
    /// Allow a new CA to replace an existing `ca.pem` or `ca.key`. Without it (the default),
    /// [`generate`] refuses with [`CertError::CaExists`] rather than silently invalidating every
    /// certificate the old CA signed (`mqedge certs --force`).
    pub replace_ca: bool,
}

/// Why certificates could not be made, so the CLI can print one clear line.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a file failed; `path` says which.
    #[error("cannot read or write {}", path.display())]
    Io {
        /// The file or directory that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// rcgen refused (bad SAN, unparsable or mismatched CA files, key generation).
    #[error("certificate generation failed")]
    Rcgen(#[from] rcgen::Error),
    /// A client CN that cannot be used as a file stem (empty, a path separator, "..", a
    /// control character, or the reserved names "ca"/"server").
    #[error("client CN {0:?} cannot be used as a file name")]
    BadName(String),
    /// A node name that is not a DNS name (letters, digits, `-`, `.`): a node certificate
    /// carries it as its DNS SAN, which peers check.
    #[error("node name {0:?} is not a DNS name (letters, digits, '-' and '.')")]
    BadNodeName(String),
    /// `--revoke NAME`: `NAME.pem` is not a valid client or node certificate of the
    /// directory's CA.
    #[error(
        "{0}.pem is not a valid client or node certificate of this directory's CA; its CRL \
         cannot revoke it"
    )]
    NotOurs(String),
    /// A new CA would replace this existing CA file, and `replace_ca` was not set.
    #[error(
        "{} already exists; refusing to replace the CA (every certificate it signed would stop \
         verifying)",
        .0.display()
    )]
    CaExists(PathBuf),
}

/// Generate the dev PKI into `out_dir` (created if missing) and return the paths written.
///
/// Files (PEM, ECDSA P-256): `ca.pem`, `ca.key` (not rewritten when an existing CA is reused),
/// `server.pem`, `server.key`, and per client CN `{CN}.pem`/`{CN}.key` (or `client.pem`/
/// `client.key` with CN `dev-client` when `client_cns` is empty). Keys are written with mode
/// 0600 on unix. Names are checked and every certificate is made before the first file is
/// written, so a refused request leaves the directory untouched.
///
/// A new CA is made unless `reuse_ca` is set and both CA files exist. It must not replace an
/// existing `ca.pem` or `ca.key` (even one of the two) unless `replace_ca` is set:
/// [`CertError::CaExists`] names the file.
pub fn generate(out_dir: &Path, opts: &CertOptions) -> Result<Vec<PathBuf>, CertError> {
    let clients = client_stems(&opts.client_cns)?;
    let mut files = Vec::new();
    let ca = ca_for(out_dir, opts, &mut files)?;
    let (server_pem, server_key) = ca.server(&opts.sans)?;
    files.push((out_dir.join("server.pem"), server_pem, false));
    files.push((out_dir.join("server.key"), server_key, true));
    for (stem, cn) in clients {
        let (cert, key) = ca.client(cn)?;
        files.push((out_dir.join(format!("{stem}.pem")), cert, false));
        files.push((out_dir.join(format!("{stem}.key")), key, true));
    }
    write_all(out_dir, files)
}

/// Node certificates for the cluster's node channel (`mqedge certs --node NAME`): per name,
/// `node-NAME.pem`/`node-NAME.key` with CN and DNS SAN `NAME`, usable as server and client
/// certificate (mutual TLS between nodes), signed by the CA of `out_dir` (made, reused or
/// refused as for [`generate`]). Nothing else is written: the server and client certificates
/// of an existing directory stay as they are.
pub fn generate_nodes(
    out_dir: &Path,
    names: &[String],
    opts: &CertOptions,
) -> Result<Vec<PathBuf>, CertError> {
    for n in names {
        let dns_like = !n.is_empty()
            && !n.starts_with(['-', '.'])
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !dns_like {
            return Err(CertError::BadNodeName(n.clone()));
        }
    }
    let mut files = Vec::new();
    let ca = ca_for(out_dir, opts, &mut files)?;
    for n in names {
        let (cert, key) = ca.leaf(
            n,
            vec![SanType::DnsName(n.as_str().try_into()?)],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        files.push((out_dir.join(format!("node-{n}.pem")), cert, false));
        files.push((out_dir.join(format!("node-{n}.key")), key, true));
    }
    write_all(out_dir, files)
}

/// The CA of `out_dir`: the existing one with `reuse_ca`, else a new one (added to `files`),
/// refused over an existing one unless `replace_ca`.
fn ca_for(
    out_dir: &Path,
    opts: &CertOptions,
    files: &mut Vec<(PathBuf, String, bool)>,
) -> Result<Ca, CertError> {
    let ca_pem_path = out_dir.join("ca.pem");
    let ca_key_path = out_dir.join("ca.key");
    if opts.reuse_ca && ca_pem_path.is_file() && ca_key_path.is_file() {
        return Ca::load(read(&ca_pem_path)?, read(&ca_key_path)?);
    }
    // `exists` follows symlinks; a dangling link is not a CA anyone trusts.
    if let Some(old) = [&ca_pem_path, &ca_key_path]
        .into_iter()
        .find(|p| p.exists())
        .filter(|_| !opts.replace_ca)
    {
        return Err(CertError::CaExists(old.clone()));
    }
    let ca = Ca::new()?;
    files.push((ca_pem_path, ca.cert_pem.clone(), false));
    files.push((ca_key_path, ca.key_pem.clone(), true));
    Ok(ca)
}

/// Creates `out_dir` and writes every file (made in full before the first is written).
fn write_all(
    out_dir: &Path,
    files: Vec<(PathBuf, String, bool)>,
) -> Result<Vec<PathBuf>, CertError> {
    fs::create_dir_all(out_dir).map_err(|source| CertError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::with_capacity(files.len());
    for (path, contents, secret) in files {
        write_file(&path, &contents, secret)?;
        written.push(path);
    }
    Ok(written)
}

/// In-memory PKI for tests: PEM strings without touching disk, so a test can start a TLS
/// listener and mTLS clients from one value.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// CA certificate; what servers and clients trust.
    pub ca_pem: String,
    /// CA private key (PKCS#8), kept so [`DevPki::client`] can issue more certificates.
    pub ca_key_pem: String,
    /// Server certificate for localhost, 127.0.0.1, ::1 and the extra SANs.
    pub server_pem: String,
    /// Server private key (PKCS#8).
    pub server_key_pem: String,
}

impl DevPki {
    /// New CA + server cert for localhost/127.0.0.1/::1 + extra `sans`, so a test gets a
    /// working TLS server identity in one call.
    pub fn new(sans: &[String]) -> Result<Self, CertError> {
        let ca = Ca::new()?;
        let (server_pem, server_key_pem) = ca.server(sans)?;
        Ok(DevPki {
            ca_pem: ca.cert_pem,
            ca_key_pem: ca.key_pem,
            server_pem,
            server_key_pem,
        })
    }

    /// Issue a client certificate `(cert_pem, key_pem)` with this CN, signed by this CA, so a
    /// test can present an mTLS identity. It has the clientAuth usage, and a DNS SAN equal to
    /// the CN when the CN contains only `[A-Za-z0-9.-]`.
    pub fn client(&self, cn: &str) -> Result<(String, String), CertError> {
        Ca::load(self.ca_pem.clone(), self.ca_key_pem.clone())?.client(cn)
    }
}

/// A CA that can sign, with the PEM it came from.
struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A fresh self-signed CA that may sign leaves only.
    fn new() -> Result<Self, CertError> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, CA_CN);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - Duration::days(1);
        params.not_after = params.not_before + Duration::days(CA_VALID_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA from its certificate and key. Refuses a key that does not belong to the
    /// certificate: everything it signed would fail verification much later, at a handshake.
    fn load(cert_pem: String, key_pem: String) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(&key_pem)?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let cert = pem
            .parse_x509()
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(
                rcgen::Error::X509("CA key does not match the CA certificate".into()).into(),
            );
        }
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Ca {
            cert_pem,
            key_pem,
            issuer,
        })
    }

    /// Server certificate `(cert_pem, key_pem)` for the local host plus `extra` names.
    fn server(&self, extra: &[String]) -> Result<(String, String), CertError> {
        let mut sans = vec![
            SanType::DnsName(SERVER_CN.try_into()?),
            SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
            SanType::IpAddress(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
        ];
        for name in extra {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        self.leaf(SERVER_CN, sans, &[ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// Client certificate `(cert_pem, key_pem)` with this CN.
    fn client(&self, cn: &str) -> Result<(String, String), CertError> {
        let dns_like = !cn.is_empty()
            && cn
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        let sans = if dns_like {
            vec![SanType::DnsName(cn.try_into()?)]
        } else {
            Vec::new()
        };
        self.leaf(cn, sans, &[ExtendedKeyUsagePurpose::ClientAuth])
    }

    /// A leaf with a fresh key, signed by this CA.
    fn leaf(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        eku: &[ExtendedKeyUsagePurpose],
    ) -> Result<(String, String), CertError> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = eku.to_vec();
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(LEAF_VALID_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// `(file stem, CN)` per client certificate, refusing CNs that are not safe file stems.
fn client_stems(cns: &[String]) -> Result<Vec<(&str, &str)>, CertError> {
    if cns.is_empty() {
        return Ok(vec![(DEFAULT_CLIENT_STEM, DEFAULT_CLIENT_CN)]);
    }
    let mut out: Vec<(&str, &str)> = Vec::with_capacity(cns.len());
    for cn in cns {
        let unsafe_stem = cn.is_empty()
            || cn.contains(['/', '\\'])
            || cn.contains("..")
            || cn.chars().any(char::is_control)
            || RESERVED_STEMS.iter().any(|r| cn.eq_ignore_ascii_case(r));
        if unsafe_stem {
            return Err(CertError::BadName(cn.clone()));
        }
        if !out.iter().any(|(stem, _)| *stem == cn) {
            out.push((cn, cn));
        }
    }
    Ok(out)
}

/// Read a whole PEM file.
fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `contents` to `path`, replacing it; `secret` files get mode 0600 on unix before any
/// byte is written, also when the file already existed with a wider mode.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    let io_err = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_err)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents.as_bytes()).map_err(io_err)
}

#[cfg(test)]
mod tests;
