//! TLS for the PostgreSQL connections the agent makes through tokio-postgres
//! (source, drill, plugin sql; the catalog's sqlx connections read the same
//! settings through `catalog::connect`), with libpq's settings and meaning: `sslmode`
//! (disable, allow, prefer, require, verify-ca, verify-full), `sslrootcert`
//! (a file, or `system`), `sslcert`/`sslkey`, from the URL or else from
//! `PGSSLMODE`/`PGSSLROOTCERT`/`PGSSLCERT`/`PGSSLKEY`, and libpq's default
//! files under `~/.postgresql/`. The client tools (pg_dump, psql) are libpq
//! themselves: they get the same URL and inherit the same environment.
//!
//! tokio-postgres knows only disable/prefer/require and refuses the other
//! ssl* parameters, so they are taken out of the URL here and the TLS is
//! ours: one rustls configuration per connection, verifying what libpq
//! verifies. Unix sockets never use TLS (as libpq).
//!
//! `sslpassword` (an encrypted client key) is not supported: rustls reads
//! only plain keys, and an encrypted one is refused naming the fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres::config::{Host, SslMode as WireMode};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    client::WebPkiServerVerifier,
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// The parameters handled here (or nowhere: `sslpassword` is refused),
/// never passed to tokio-postgres or sqlx.
pub const TLS_PARAMETERS: [&str; 5] =
    ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"];

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
    /// `where_` names the setting for the error (`sslmode` or `PGSSLMODE`).
    pub fn parse(value: &str, where_: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                "{where_}={other:?} is not an sslmode: use disable, allow, prefer, require, verify-ca or verify-full"
            ))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Checks the URL's own `sslmode` (at configuration time, so that a typo
/// stops the agent from starting rather than a job at night).
pub fn check_url(url: &url::Url) -> Result<(), String> {
    if let Some((_, v)) = url.query_pairs().find(|(k, _)| k == "sslmode") {
        SslMode::parse(&v, "sslmode")?;
    }
    Ok(())
}

pub(crate) enum Roots {
    File(PathBuf),
    System,
}

/// The TLS settings of a URL's parameters, else the PGSSL* environment, as
/// libpq reads them (the catalog's sqlx connections read them here too).
pub(crate) struct TlsSettings {
    pub mode: SslMode,
    pub root: Option<Roots>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsSettings {
    pub(crate) fn read(
        pairs: &[(String, String)],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<TlsSettings, String> {
        let param = |name: &str, var: &str| -> Option<(String, String)> {
            match pairs.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => Some((v.clone(), name.to_string())),
                None => env(var).map(|v| (v, var.to_string())),
            }
        };
        let root = param("sslrootcert", "PGSSLROOTCERT").map(|(v, _)| match v.as_str() {
            "system" => Roots::System,
            _ => Roots::File(PathBuf::from(v)),
        });
        let mode = match param("sslmode", "PGSSLMODE") {
            Some((v, setting)) => SslMode::parse(&v, &setting)?,
            // libpq: the system roots are only worth checking with the name.
            None if matches!(root, Some(Roots::System)) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if matches!(root, Some(Roots::System)) && mode != SslMode::VerifyFull {
            return Err(format!(
                "weak sslmode={} may not be used with sslrootcert=system (use sslmode=verify-full)",
                mode.name()
            ));
        }
        let cert = param("sslcert", "PGSSLCERT").map(|(v, _)| PathBuf::from(v));
        let key = param("sslkey", "PGSSLKEY").map(|(v, _)| PathBuf::from(v));
        Ok(TlsSettings {
            mode,
            root,
            cert,
            key,
        })
    }
}

/// How to connect to one URL: tokio-postgres's settings plus the TLS.
#[derive(Clone)]
pub struct PgConnect {
    config: tokio_postgres::Config,
    /// The wire modes to try in turn (libpq's allow and prefer try twice).
    attempts: Vec<WireMode>,
    tls: MakeRustlsConnect,
}

impl PgConnect {
    /// Reads `url` (libpq's URL form) and the PGSSL* environment.
    pub fn from_url(url: &str) -> Result<PgConnect, String> {
        Self::from_url_env(url, &|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    fn from_url_env(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<PgConnect, String> {
        let (pairs, rest) = split_params(url, |k| !TLS_PARAMETERS.contains(&k))?;
        let settings = TlsSettings::read(&pairs, env)?;
        let config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| format!("database URL: {e}"))?;
        let sockets_only = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)))
            && !config.get_hosts().is_empty();
        let (attempts, tls) = if settings.mode == SslMode::Disable || sockets_only {
            (vec![WireMode::Disable], plain_connector()?)
        } else {
            let attempts = match settings.mode {
                SslMode::Allow => vec![WireMode::Disable, WireMode::Require],
                SslMode::Prefer => vec![WireMode::Prefer, WireMode::Disable],
                _ => vec![WireMode::Require],
            };
            (attempts, connector(settings, env)?)
        };
        Ok(PgConnect {
            config,
            attempts,
            tls,
        })
    }

    /// The connector, for cancel requests.
    pub fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    pub async fn connect(&self) -> Result<tokio_postgres::Client, String> {
        let mut failed = Failed::default();
        for mode in &self.attempts {
            let mut config = self.config.clone();
            config.ssl_mode(*mode);
            match config.connect(self.tls.clone()).await {
                Ok((client, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    return Ok(client);
                }
                Err(e) => {
                    if !failed.retry_after(*mode, &e) {
                        break;
                    }
                }
            }
        }
        Err(failed.describe())
    }

    /// The same for the blocking `postgres` client; `adjust` sets what the
    /// caller adds (timeouts, application name).
    pub fn connect_blocking(
        &self,
        adjust: impl Fn(&mut postgres::Config),
    ) -> Result<postgres::Client, String> {
        let mut failed = Failed::default();
        for mode in &self.attempts {
            let mut config = postgres::Config::from(self.config.clone());
            config.ssl_mode(*mode);
            adjust(&mut config);
            match config.connect(self.tls.clone()) {
                Ok(client) => return Ok(client),
                Err(e) => {
                    if !failed.retry_after(*mode, &e) {
                        break;
                    }
                }
            }
        }
        Err(failed.describe())
    }
}

/// A libpq URL's parameters, and the URL with only those `keep` accepts.
pub fn split_params(
    url: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<(Vec<(String, String)>, String), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("database URL: {e}"))?;
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let kept: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| keep(k)).collect();
    // Percent-encoded, never form-encoded: tokio-postgres reads `+` as a
    // plus, so `options=-c a=1 -c b=2` must keep its spaces as %20.
    const PART: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, PART).to_string();
    let query: Vec<String> = kept
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    parsed.set_query((!query.is_empty()).then(|| query.join("&")).as_deref());
    Ok((pairs, parsed.into()))
}

/// The error with its causes: tokio-postgres's Display says only "error
/// performing TLS handshake", and which certificate check failed is what
/// the operator needs. sqlx's messages (the catalog's) never hold the
/// password.
pub fn full_error(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s = format!("{s}: {c}");
        }
        source = cause.source();
    }
    s
}

/// The attempts of one connection that failed so far, for one message.
#[derive(Default)]
struct Failed(Vec<(WireMode, String)>);

impl Failed {
    /// Records the failure of the attempt in `mode`; true when libpq's
    /// allow and prefer would try the other way after it: after the server
    /// refused the session (pg_hba.conf, authentication) or the TLS
    /// handshake failed, not when the server cannot be reached at all.
    fn retry_after(&mut self, mode: WireMode, e: &tokio_postgres::Error) -> bool {
        self.0.push((mode, full_error(e)));
        e.as_db_error().is_some() || e.to_string().contains("TLS")
    }

    /// One failure as it is; several, each named by whether it used TLS.
    fn describe(self) -> String {
        let failed = self.0;
        if failed.len() == 1 {
            return failed
                .into_iter()
                .next()
                .map(|(_, m)| m)
                .unwrap_or_default();
        }
        failed
            .into_iter()
            .map(|(mode, m)| match mode {
                WireMode::Disable => format!("without TLS: {m}"),
                _ => format!("with TLS: {m}"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// For sslmode=disable and sockets: never used for a handshake.
fn plain_connector() -> Result<MakeRustlsConnect, String> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Lenient {
            chain: None,
            provider,
        }))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// libpq's default files, used when neither the URL nor the environment names one.
pub(crate) fn default_file(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let home = env("HOME")?;
    let p = Path::new(&home).join(".postgresql").join(name);
    p.exists().then_some(p)
}

fn connector(
    settings: TlsSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<MakeRustlsConnect, String> {
    client_config(settings, env).map(MakeRustlsConnect::new)
}

/// What a client that speaks the wire protocol itself (the replication
/// connection, which tokio-postgres cannot open) needs from a URL:
/// tokio-postgres's reading of it (hosts, ports, user, password, connect
/// timeout), the sslmode, and the TLS configuration [`PgConnect`] would use
/// (`None` under sslmode=disable). Unix sockets never use TLS, as libpq.
pub struct WireSettings {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

pub fn wire_settings(url: &str) -> Result<WireSettings, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (pairs, rest) = split_params(url, |k| !TLS_PARAMETERS.contains(&k))?;
    let settings = TlsSettings::read(&pairs, &env)?;
    let config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("database URL: {e}"))?;
    let mode = settings.mode;
    let tls = match mode {
        SslMode::Disable => None,
        _ => Some(Arc::new(client_config(settings, &env)?)),
    };
    Ok(WireSettings { config, mode, tls })
}

/// The name a TLS handshake with `host` checks (under verify-full) and sends.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is not a host name TLS can check"))
}

fn client_config(
    TlsSettings {
        mode,
        root,
        cert,
        key,
    }: TlsSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let root = root.or_else(|| default_file("root.crt", env).map(Roots::File));
    let verifier: Arc<dyn ServerCertVerifier> = match root {
        // libpq checks the chain whenever it has a root certificate, even
        // under require; the host name only under verify-full.
        Some(root) => {
            let mut store = RootCertStore::empty();
            match root {
                Roots::System => {
                    for cert in rustls_native_certs::load_native_certs().certs {
                        let _ = store.add(cert);
                    }
                    if store.is_empty() {
                        return Err("sslrootcert=system: no system root certificates found (install ca-certificates, or name the CA's file in sslrootcert)".into());
                    }
                }
                Roots::File(path) => {
                    let certs = CertificateDer::pem_file_iter(&path)
                        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                    for cert in certs {
                        let cert =
                            cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                        store
                            .add(cert)
                            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                    }
                    if store.is_empty() {
                        return Err(format!(
                            "sslrootcert {}: no certificate in the file",
                            path.display()
                        ));
                    }
                }
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(Lenient {
                    chain: Some(webpki),
                    provider: provider.clone(),
                })
            }
        }
        None if mode.verifies() => {
            return Err(format!(
                "sslmode={} needs the server's root certificate: set sslrootcert to the CA's file (or sslrootcert=system for a publicly signed server)",
                mode.name()
            ))
        }
        None => Arc::new(Lenient {
            chain: None,
            provider: provider.clone(),
        }),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let cert = cert.or_else(|| default_file("postgresql.crt", env));
    let config = match cert {
        Some(cert) => {
            let key = key
                .or_else(|| default_file("postgresql.key", env))
                .ok_or_else(|| {
                    format!(
                        "sslcert {} has no key: set sslkey to its private key's file",
                        cert.display()
                    )
                })?;
            let chain = CertificateDer::pem_file_iter(&cert)
                .map_err(|e| format!("sslcert {}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
            builder
                .with_client_auth_cert(chain, read_key(&key)?)
                .map_err(|e| {
                    format!("sslcert {} / sslkey {}: {e}", cert.display(), key.display())
                })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// The client key, with libpq's rule on its permissions.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("sslkey {}: {e}", path.display()))?;
    let loose = if meta.uid() == 0 {
        meta.mode() & 0o037 != 0
    } else {
        meta.mode() & 0o077 != 0
    };
    if meta.is_file() && loose {
        return Err(format!(
            "sslkey {} has group or world access: chmod 0600 it (or 0640 if owned by root)",
            path.display()
        ));
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let encrypted = std::fs::read_to_string(path)
            .map(|s| s.contains("ENCRYPTED"))
            .unwrap_or(false);
        if encrypted {
            format!(
                "sslkey {} is encrypted, and sslpassword is not supported: decrypt it (openssl pkey -in KEY -out PLAIN) and keep it 0600",
                path.display()
            )
        } else {
            format!("sslkey {}: {e}", path.display())
        }
    })
}

/// What libpq verifies short of verify-full. With a root certificate
/// (verify-ca, and require with one: `chain`) the chain must end at a
/// trusted root, and any host name will do; without one (require, prefer,
/// allow) the session is encrypted, not authenticated (libpq's meaning).
/// Either way the handshake's signatures are checked, so the session is
/// bound to the certificate shown.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the name only after the chain: a name error means the chain is good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    // The provider's algorithms, which are also the ones `chain` was built with.
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn every_libpq_sslmode_is_read_and_an_unknown_one_is_an_error_naming_it() {
        for m in ["disable", "allow", "prefer", "require"] {
            let c = PgConnect::from_url_env(&format!("postgres://u@db/x?sslmode={m}"), &env_none)
                .unwrap();
            let want = match m {
                "disable" => vec![WireMode::Disable],
                "allow" => vec![WireMode::Disable, WireMode::Require],
                "prefer" => vec![WireMode::Prefer, WireMode::Disable],
                _ => vec![WireMode::Require],
            };
            assert_eq!(c.attempts, want, "{m}");
        }
        let e = PgConnect::from_url_env("postgres://u@db/x?sslmode=verify_full", &env_none)
            .err()
            .unwrap();
        assert!(e.contains("sslmode=\"verify_full\""), "{e}");
        let env = |k: &str| (k == "PGSSLMODE").then(|| "bogus".to_string());
        let e = PgConnect::from_url_env("postgres://u@db/x", &env)
            .err()
            .unwrap();
        assert!(e.contains("PGSSLMODE"), "{e}");
        // The URL wins over the environment.
        assert!(PgConnect::from_url_env("postgres://u@db/x?sslmode=require", &env).is_ok());
        // Verifying without a root certificate is refused, naming the setting.
        let e = PgConnect::from_url_env("postgres://u@db/x?sslmode=verify-ca", &env_none)
            .err()
            .unwrap();
        assert!(e.contains("sslrootcert"), "{e}");
        let e = PgConnect::from_url_env(
            "postgres://u@db/x?sslmode=require&sslrootcert=system",
            &env_none,
        )
        .err()
        .unwrap();
        assert!(e.contains("verify-full"), "{e}");
        // Sockets never use TLS, as libpq.
        let c = PgConnect::from_url_env("postgres://u@%2Ftmp%2Fs/x?sslmode=require", &env_none)
            .unwrap();
        assert_eq!(c.attempts, vec![WireMode::Disable]);
    }

    #[test]
    fn a_missing_sslrootcert_file_is_named() {
        let e = PgConnect::from_url_env(
            "postgres://u@db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            &env_none,
        )
        .err()
        .unwrap();
        assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
    }
}
