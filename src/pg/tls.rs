//! TLS for PostgreSQL connections, with libpq's connection-string keys and `sslmode` rules.
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and rejects libpq's other TLS
//! keys, so [`split_conninfo`](super::conninfo::split_conninfo) takes them out of the connection string (key/value or URI form)
//! and hands the rest on; [`TlsSetup::prepare`] turns them into a rustls configuration (the
//! aws-lc-rs provider that the storage client already uses):
//!
//! | `sslmode`      | TLS                    | server certificate                                  |
//! |----------------|------------------------|-----------------------------------------------------|
//! | `disable`      | never                  | —                                                   |
//! | `allow`/`prefer` (default) | if the server offers it | not verified (as libpq, which falls back to plain text) |
//! | `require`      | always                 | chain checked only if a root certificate is there (`sslrootcert`, or `~/.postgresql/root.crt`), like libpq |
//! | `verify-ca`    | always                 | chain against `sslrootcert` (default `~/.postgresql/root.crt`), no host name check |
//! | `verify-full`  | always                 | chain and host name (or IP address) |
//!
//! `sslrootcert=system` uses the system's trusted roots and needs `verify-full` (its default).
//! `sslcert`/`sslkey` (default `~/.postgresql/postgresql.crt`/`.key`) send a client
//! certificate; the key must not be readable by group or others (0640 is allowed when root owns
//! it), as libpq insists. `sslcrl`/`sslcrldir` are checked whenever the chain is.
//! `ssl_min_protocol_version`/`ssl_max_protocol_version` and `sslsni` are honoured;
//! `sslcompression` is accepted and ignored; `sslpassword` (encrypted keys) is refused.
//! Unset keys come from libpq's `PGSSL*` environment variables.
//!
//! PostgreSQL does not do TLS over unix sockets and libpq ignores `sslmode` for them: a socket
//! host connects without TLS, and when every host is a socket directory the TLS keys are not
//! used at all (no files are read). With a mix of socket and TCP hosts, each TCP host gets the
//! TLS the keys ask for (see `pg::client`).
//!
//! Nothing here puts a password, or any other value but file names and modes, in an error.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::usage;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: it only knows these three.
    fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            SslMode::Disable => Pg::Disable,
            SslMode::Allow | SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }
}

/// libpq's TLS keys as written: from the connection string, then (see [`TlsOptions::with_env`])
/// from the `PGSSL*` environment. Empty values count as unset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    pub sslcrl: Option<String>,
    pub sslcrldir: Option<String>,
    pub sslsni: Option<String>,
    pub sslcertmode: Option<String>,
    pub ssl_min_protocol_version: Option<String>,
    pub ssl_max_protocol_version: Option<String>,
}

/// (connection-string key, environment variable, field).
type Slot = (
    &'static str,
    &'static str,
    fn(&mut TlsOptions) -> &mut Option<String>,
);

pub(super) const SLOTS: &[Slot] = &[
    ("sslmode", "PGSSLMODE", |o| &mut o.sslmode),
    ("sslrootcert", "PGSSLROOTCERT", |o| &mut o.sslrootcert),
    ("sslcert", "PGSSLCERT", |o| &mut o.sslcert),
    ("sslkey", "PGSSLKEY", |o| &mut o.sslkey),
    ("sslcrl", "PGSSLCRL", |o| &mut o.sslcrl),
    ("sslcrldir", "PGSSLCRLDIR", |o| &mut o.sslcrldir),
    ("sslsni", "PGSSLSNI", |o| &mut o.sslsni),
    ("sslcertmode", "PGSSLCERTMODE", |o| &mut o.sslcertmode),
    ("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION", |o| {
        &mut o.ssl_min_protocol_version
    }),
    ("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION", |o| {
        &mut o.ssl_max_protocol_version
    }),
];

impl TlsOptions {
    /// Take `key` if it is one of ours: `Ok(true)` when consumed.
    pub(super) fn take(&mut self, key: &str, value: &str) -> anyhow::Result<bool> {
        if let Some((_, _, field)) = SLOTS.iter().find(|(k, _, _)| *k == key) {
            *field(self) = Some(value.to_string()).filter(|v| !v.is_empty());
            return Ok(true);
        }
        match key {
            "sslpassword" => Err(usage(
                "sslpassword is not supported: encrypted client keys cannot be used; \
                 decrypt the key (openssl pkey -in KEY -out KEY.plain) and point sslkey at it",
            )),
            // Obsolete in libpq as well: modern OpenSSL builds never compress.
            "sslcompression" => {
                tracing::debug!("ignoring sslcompression: TLS compression is never used");
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Fill what the connection string left unset from libpq's environment variables.
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> TlsOptions {
        for (_, var, field) in SLOTS {
            let slot = field(&mut self);
            if slot.is_none() {
                *slot = env(var).filter(|v| !v.is_empty());
            }
        }
        self
    }
}

/// How much of the server certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndName,
}

/// Where trusted roots come from, for messages.
#[derive(Debug, Clone)]
enum Roots {
    None,
    File(PathBuf),
    System,
}

/// Everything `connect` needs for TLS.
pub struct TlsSetup {
    /// The libpq mode in force (`disable` when TLS does not apply, e.g. unix sockets).
    pub mode: SslMode,
    pub connector: MakeRustlsConnect,
    verify: Verify,
    roots: Roots,
    client_cert: Option<PathBuf>,
}

impl TlsSetup {
    /// Resolve the options (defaults under `home`, i.e. `~/.postgresql/`) and read the files
    /// they name. `tls_applies` is false when every host is a unix socket: then nothing is
    /// read and TLS is off.
    pub fn prepare(
        opts: &TlsOptions,
        home: Option<&Path>,
        tls_applies: bool,
    ) -> anyhow::Result<TlsSetup> {
        let Choices {
            system,
            mode,
            sni,
            versions,
            send_cert,
        } = Choices::parse(opts)?;

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        if !tls_applies || mode == SslMode::Disable {
            let mode = if tls_applies { mode } else { SslMode::Disable };
            return Ok(TlsSetup {
                mode,
                connector: unverified_connector(provider)?,
                verify: Verify::Nothing,
                roots: Roots::None,
                client_cert: None,
            });
        }

        let pg_dir = home.map(|h| h.join(".postgresql"));
        let explicit_root = opts.sslrootcert.as_deref().filter(|_| !system);
        let root_path = explicit_root
            .map(PathBuf::from)
            .or_else(|| pg_dir.as_ref().map(|d| d.join("root.crt")));
        let verify = match mode {
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => Verify::Nothing,
            // libpq: a root certificate that is there turns `require` into `verify-ca`.
            SslMode::Require if explicit_root.is_some() => Verify::Chain,
            SslMode::Require if root_path.as_deref().is_some_and(Path::exists) => Verify::Chain,
            SslMode::Require => Verify::Nothing,
            SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::ChainAndName,
        };

        let (roots, verifier) = server_verifier(opts, &provider, verify, mode, system, root_path)?;

        let client = if send_cert {
            client_identity(opts, pg_dir.as_deref())?
        } else {
            None
        };

        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .context("TLS protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let (mut config, client_cert) = match client {
            Some((path, certs, key)) => {
                let config = builder.with_client_auth_cert(certs, key).with_context(|| {
                    format!("client certificate {} and its key", path.display())
                })?;
                (config, Some(path))
            }
            None => (builder.with_no_client_auth(), None),
        };
        config.enable_sni = sni;
        Ok(TlsSetup {
            mode,
            connector: MakeRustlsConnect::new(config),
            verify,
            roots,
            client_cert,
        })
    }

    /// What tokio-postgres is told.
    pub fn tokio_postgres_mode(&self) -> tokio_postgres::config::SslMode {
        self.mode.for_tokio_postgres()
    }

    /// `allow`/`prefer`: a failed TLS handshake is retried without TLS, as libpq does.
    pub fn falls_back_to_plain(&self) -> bool {
        matches!(self.mode, SslMode::Allow | SslMode::Prefer)
    }

    /// For logs and messages: the mode and the files in use (no secrets).
    pub fn summary(&self) -> String {
        let mut s = format!("sslmode={}", self.mode.as_str());
        match &self.roots {
            Roots::None => {}
            Roots::File(p) => s.push_str(&format!(", sslrootcert={}", p.display())),
            Roots::System => s.push_str(", sslrootcert=system"),
        }
        if let Some(c) = &self.client_cert {
            s.push_str(&format!(", sslcert={}", c.display()));
        }
        if self.mode != SslMode::Disable {
            s.push_str(match self.verify {
                Verify::Nothing => ", server certificate not verified",
                Verify::Chain => ", certificate chain verified, host name not checked",
                Verify::ChainAndName => ", certificate chain and host name verified",
            });
        }
        s
    }

    /// A clear message for a connection error that a TLS handshake caused, or `None`.
    pub fn explain(&self, err: &(dyn StdError + 'static)) -> Option<String> {
        let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = cur {
            let found = e.downcast_ref::<rustls::Error>().or_else(|| {
                e.downcast_ref::<std::io::Error>()
                    .and_then(std::io::Error::get_ref)
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            });
            if let Some(r) = found {
                return Some(self.describe(r));
            }
            cur = e.source();
        }
        None
    }

    fn describe(&self, err: &rustls::Error) -> String {
        match err {
            rustls::Error::InvalidCertificate(ce) => {
                let what = match ce {
                    CertificateError::UnknownIssuer => match &self.roots {
                        Roots::File(p) => format!(
                            "the server's certificate is not signed by a CA in {}",
                            p.display()
                        ),
                        Roots::System => {
                            "the server's certificate is not signed by a CA the system trusts"
                                .to_string()
                        }
                        Roots::None => "unknown issuer".to_string(),
                    },
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. } => format!(
                        "the server's certificate does not name the host connected to: {ce}; connect by a name it was issued for, or use sslmode=verify-ca"
                    ),
                    CertificateError::Revoked => {
                        "the server's certificate is revoked (sslcrl/sslcrldir)".to_string()
                    }
                    CertificateError::UnknownRevocationStatus => {
                        "no CRL in sslcrl/sslcrldir covers a certificate of the server's chain"
                            .to_string()
                    }
                    other => other.to_string(),
                };
                format!(
                    "TLS: certificate verify failed: {what} (sslmode={})",
                    self.mode.as_str()
                )
            }
            rustls::Error::AlertReceived(alert) => {
                use rustls::AlertDescription as A;
                let hint = match alert {
                    A::CertificateRequired | A::HandshakeFailure if self.client_cert.is_none() => {
                        "; the server may want a client certificate (sslcert, sslkey)"
                    }
                    A::UnknownCA | A::BadCertificate | A::CertificateUnknown
                        if self.client_cert.is_some() =>
                    {
                        "; the server did not accept the client certificate"
                    }
                    _ => "",
                };
                format!(
                    "TLS: the server refused the handshake ({alert:?}){hint} (sslmode={})",
                    self.mode.as_str()
                )
            }
            other => format!(
                "TLS: handshake failed: {other} (sslmode={})",
                self.mode.as_str()
            ),
        }
    }
}

/// A connector that does no verification (used when TLS is off or not verified).
fn unverified_connector(provider: Arc<CryptoProvider>) -> anyhow::Result<MakeRustlsConnect> {
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn protocol_versions(
    min: Option<&str>,
    max: Option<&str>,
) -> anyhow::Result<Vec<&'static rustls::SupportedProtocolVersion>> {
    // libpq's names, in order; rustls does TLS 1.2 and 1.3 only.
    const NAMES: [&str; 4] = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"];
    let rank = |key: &str, v: Option<&str>, default: usize| -> anyhow::Result<usize> {
        match v {
            None => Ok(default),
            Some(v) => NAMES.iter().position(|n| *n == v).ok_or_else(|| {
                usage(format!(
                    "invalid {key} \"{v}\": use TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3"
                ))
            }),
        }
    };
    let lo = rank("ssl_min_protocol_version", min, 2)?.max(2);
    let hi = rank("ssl_max_protocol_version", max, 3)?;
    if hi < 2 {
        return Err(usage(
            "ssl_max_protocol_version below TLSv1.2 is not supported (only TLSv1.2 and TLSv1.3 are)",
        ));
    }
    if lo > hi {
        return Err(usage(
            "ssl_min_protocol_version is above ssl_max_protocol_version",
        ));
    }
    Ok([&rustls::version::TLS12, &rustls::version::TLS13][lo - 2..=hi - 2].to_vec())
}

fn file_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("read root certificate file {}: {e}", path.display()))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| anyhow!("read root certificate file {}: {e}", path.display()))?;
        store
            .add(cert)
            .with_context(|| format!("root certificate file {}", path.display()))?;
    }
    if store.is_empty() {
        bail!(
            "root certificate file {} holds no PEM certificate",
            path.display()
        );
    }
    Ok(store)
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        bail!(
            "sslrootcert=system: no trusted root certificates found on this system{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        );
    }
    Ok(store)
}

fn load_crls(
    file: Option<&str>,
    dir: Option<&str>,
) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    let mut paths = Vec::new();
    if let Some(f) = file {
        paths.push(PathBuf::from(f));
    }
    if let Some(d) = dir {
        let entries = std::fs::read_dir(d).with_context(|| format!("read sslcrldir {d}"))?;
        for e in entries {
            let p = e.with_context(|| format!("read sslcrldir {d}"))?.path();
            if p.is_file() {
                paths.push(p);
            }
        }
        paths.sort();
    }
    let mut crls = Vec::new();
    for p in paths {
        let read = |e: rustls::pki_types::pem::Error| anyhow!("read CRL file {}: {e}", p.display());
        for crl in CertificateRevocationListDer::pem_file_iter(&p).map_err(read)? {
            crls.push(crl.map_err(read)?);
        }
    }
    Ok(crls)
}

/// The client certificate chain and key, if there is one: `sslcert`/`sslkey`, or libpq's
/// defaults when those files exist.
#[allow(clippy::type_complexity)]
fn client_identity(
    opts: &TlsOptions,
    pg_dir: Option<&Path>,
) -> anyhow::Result<
    Option<(
        PathBuf,
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
    )>,
> {
    let cert_path = match (&opts.sslcert, pg_dir) {
        (Some(c), _) => {
            let p = PathBuf::from(c);
            if !p.exists() {
                bail!(
                    "client certificate file \"{}\" does not exist (sslcert)",
                    p.display()
                );
            }
            p
        }
        (None, Some(d)) if d.join("postgresql.crt").exists() => d.join("postgresql.crt"),
        (None, _) => return Ok(None),
    };
    let key_path = match (&opts.sslkey, pg_dir) {
        (Some(k), _) => PathBuf::from(k),
        (None, Some(d)) => d.join("postgresql.key"),
        (None, None) => bail!(
            "client certificate {} but no sslkey (and no home directory for the default ~/.postgresql/postgresql.key)",
            cert_path.display()
        ),
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("read client certificate file {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        bail!(
            "client certificate file {} holds no PEM certificate",
            cert_path.display()
        );
    }
    let key = read_private_key(&key_path)
        .with_context(|| format!("client certificate {}", cert_path.display()))?;
    Ok(Some((cert_path, certs, key)))
}

/// libpq's rule: the key must be a regular file with no group or other access, or, when root
/// owns it, at most group-readable. Parse errors never show the file's content.
fn read_private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        anyhow!(
            "private key file \"{}\" cannot be read (sslkey): {e}",
            path.display()
        )
    })?;
    if !meta.is_file() {
        bail!(
            "private key file \"{}\" is not a regular file",
            path.display()
        );
    }
    let too_open = if meta.uid() == 0 {
        meta.mode() & 0o037 != 0
    } else {
        meta.mode() & 0o077 != 0
    };
    if too_open {
        bail!(
            "private key file \"{}\" has group or world access (mode {:04o}); it must be u=rw (0600) or less if owned by the current user, or u=rw,g=r (0640) or less if owned by root",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow!("read private key file \"{}\": {e}", path.display()))?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(_) if bytes.windows(9).any(|w| w == b"ENCRYPTED") => bail!(
            "private key file \"{}\" is encrypted, which is not supported: decrypt it (openssl pkey -in KEY -out KEY.plain)",
            path.display()
        ),
        Err(rustls::pki_types::pem::Error::Io(e)) => {
            bail!("read private key file \"{}\": {e}", path.display())
        }
        Err(_) => bail!(
            "private key file \"{}\" holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        ),
    }
}

/// `verify-ca` (and `require` with a root certificate): the chain must lead to a trusted root,
/// the name is not checked. rustls checks the chain before the name, so a name error means
/// the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root certificate: any certificate is accepted (libpq does not
/// verify then either), but the handshake signatures are still checked, so the session is
/// bound to the key of the certificate presented (which SCRAM channel binding relies on).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The connection options that decide the TLS setup, checked (libpq's rules and messages).
struct Choices {
    system: bool,
    mode: SslMode,
    sni: bool,
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    send_cert: bool,
}

impl Choices {
    fn parse(opts: &TlsOptions) -> anyhow::Result<Choices> {
        let system = opts.sslrootcert.as_deref() == Some("system");
        let mode = match opts.sslmode.as_deref() {
            Some(s) => SslMode::parse(s).ok_or_else(|| {
                usage(format!(
                    "invalid sslmode \"{s}\": use disable, allow, prefer, require, verify-ca or verify-full"
                ))
            })?,
            None if system => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if system && mode != SslMode::VerifyFull {
            return Err(usage(format!(
                "sslmode={} may not be used with sslrootcert=system (use verify-full)",
                mode.as_str()
            )));
        }
        let sni = match opts.sslsni.as_deref() {
            None | Some("1") => true,
            Some("0") => false,
            Some(v) => return Err(usage(format!("invalid sslsni \"{v}\": use 0 or 1"))),
        };
        let versions = protocol_versions(
            opts.ssl_min_protocol_version.as_deref(),
            opts.ssl_max_protocol_version.as_deref(),
        )?;
        let send_cert = match opts.sslcertmode.as_deref() {
            None | Some("allow") => true,
            Some("disable") => false,
            Some("require") => {
                return Err(usage(
                    "sslcertmode=require is not supported (use allow, the default)",
                ))
            }
            Some(v) => {
                return Err(usage(format!(
                    "invalid sslcertmode \"{v}\": use disable or allow"
                )))
            }
        };

        Ok(Choices {
            system,
            mode,
            sni,
            versions,
            send_cert,
        })
    }
}

/// How the server's certificate is checked: the roots it must chain to (a file or the
/// system's) and the verifier; anything goes when `verify` is `Nothing`.
fn server_verifier(
    opts: &TlsOptions,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    verify: Verify,
    mode: SslMode,
    system: bool,
    root_path: Option<PathBuf>,
) -> anyhow::Result<(Roots, Arc<dyn ServerCertVerifier>)> {
    Ok(if verify == Verify::Nothing {
        (Roots::None, Arc::new(AcceptAnyCert(provider.clone())))
    } else {
        let (roots, store) = if system {
            (Roots::System, system_roots()?)
        } else {
            let path = root_path.ok_or_else(|| {
                anyhow!(
                    "sslmode={} needs a root certificate: set sslrootcert (no home directory for the default ~/.postgresql/root.crt)",
                    mode.as_str()
                )
            })?;
            if !path.exists() {
                bail!(
                    "root certificate file \"{}\" does not exist: point sslrootcert at the CA that signed the server's certificate, or use an sslmode that does not verify it",
                    path.display()
                );
            }
            let store = file_roots(&path)?;
            (Roots::File(path), store)
        };
        let crls = load_crls(opts.sslcrl.as_deref(), opts.sslcrldir.as_deref())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
            .with_crls(crls)
            .build()
            .context("set up server certificate verification")?;
        let verifier: Arc<dyn ServerCertVerifier> = if verify == Verify::Chain {
            Arc::new(ChainOnly(webpki))
        } else {
            webpki
        };
        (roots, verifier)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pg::conninfo::split_conninfo;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn env_fills_only_unset_keys() {
        let opts = split_conninfo("host=h sslmode=require")
            .unwrap()
            .tls
            .with_env(|v| match v {
                "PGSSLMODE" => Some("disable".into()),
                "PGSSLROOTCERT" => Some("/env/ca.crt".into()),
                "PGSSLCERT" => Some(String::new()),
                _ => None,
            });
        assert_eq!(opts.sslmode.as_deref(), Some("require"));
        assert_eq!(opts.sslrootcert.as_deref(), Some("/env/ca.crt"));
        assert_eq!(opts.sslcert, None);
    }

    fn opts(s: &str) -> TlsOptions {
        split_conninfo(s).unwrap().tls
    }

    #[test]
    fn modes_and_their_requirements() {
        let home = tempfile::tempdir().unwrap();
        let h = Some(home.path());
        // Default: prefer, no verification, no files needed.
        let t = TlsSetup::prepare(&opts("host=h"), h, true).unwrap();
        assert_eq!(t.mode, SslMode::Prefer);
        assert_eq!(t.verify, Verify::Nothing);
        assert!(t.falls_back_to_plain());
        let t = TlsSetup::prepare(&opts("sslmode=require"), h, true).unwrap();
        assert_eq!(t.verify, Verify::Nothing);
        assert_eq!(
            t.tokio_postgres_mode(),
            tokio_postgres::config::SslMode::Require
        );
        // verify-* need a root certificate, and say where they looked.
        let e = TlsSetup::prepare(&opts("sslmode=verify-full"), h, true)
            .err()
            .unwrap();
        assert!(e.to_string().contains(".postgresql/root.crt"), "{e}");
        let e = TlsSetup::prepare(&opts("sslmode=verify-ca sslrootcert=/nope/ca.crt"), h, true)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("\"/nope/ca.crt\" does not exist"),
            "{e}"
        );
        // Unix sockets: no TLS, nothing read.
        let t =
            TlsSetup::prepare(&opts("sslmode=verify-full sslrootcert=/nope"), h, false).unwrap();
        assert_eq!(t.mode, SslMode::Disable);
        assert_eq!(
            t.tokio_postgres_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        // Bad values are usage errors.
        for bad in [
            "sslmode=verify",
            "sslsni=2",
            "ssl_min_protocol_version=TLSv9",
            "ssl_max_protocol_version=TLSv1.1",
            "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
            "sslrootcert=system sslmode=require",
            "sslcertmode=require",
        ] {
            let e = TlsSetup::prepare(&opts(bad), h, true).err().unwrap();
            assert_eq!(
                crate::error::exit_code(&e),
                crate::error::exit::USAGE,
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn handshake_errors_are_explained() {
        let t = TlsSetup::prepare(&opts("sslmode=require"), None, true).unwrap();
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        let msg = t.explain(&io).unwrap();
        assert!(msg.starts_with("TLS: certificate verify failed: "), "{msg}");
        assert!(msg.ends_with("(sslmode=require)"), "{msg}");
        let other = std::io::Error::other("connection refused");
        assert_eq!(t.explain(&other), None);
    }

    #[test]
    fn protocol_version_ranges() {
        let names = |v: Vec<&'static rustls::SupportedProtocolVersion>| {
            v.iter().map(|v| v.version).collect::<Vec<_>>()
        };
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        assert_eq!(
            names(protocol_versions(None, None).unwrap()),
            [TLSv1_2, TLSv1_3]
        );
        assert_eq!(
            names(protocol_versions(Some("TLSv1"), Some("TLSv1.2")).unwrap()),
            [TLSv1_2]
        );
        assert_eq!(
            names(protocol_versions(Some("TLSv1.3"), None).unwrap()),
            [TLSv1_3]
        );
    }

    #[test]
    fn open_private_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(&key, "not a key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_private_key(&key).unwrap_err().to_string();
        assert!(e.contains("has group or world access"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_private_key(&key).unwrap_err().to_string();
        assert!(e.contains("holds no PEM private key"), "{e}");
        assert!(!e.contains("not a key"));
        std::fs::write(
            &key,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = read_private_key(&key).unwrap_err().to_string();
        assert!(e.contains("is encrypted"), "{e}");
    }

    #[test]
    fn explicit_client_certificate_must_exist() {
        let home = tempfile::tempdir().unwrap();
        let e = TlsSetup::prepare(
            &opts("sslmode=require sslcert=/nope/c.crt sslkey=/nope/c.key"),
            Some(home.path()),
            true,
        )
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("\"/nope/c.crt\" does not exist"),
            "{e}"
        );
        // Without a default file, no client certificate and no error.
        let t = TlsSetup::prepare(&opts("sslmode=require"), Some(home.path()), true).unwrap();
        assert!(t.client_cert.is_none());
    }
}
