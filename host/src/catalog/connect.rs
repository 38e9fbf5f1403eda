//! The catalog's connection: sqlx, with libpq's TLS settings mapped onto it
//! explicitly, because sqlx 0.8 reads them differently from libpq (and from
//! `servers::pg_tls`, which every other connection uses):
//!
//! - an unknown `PGSSLMODE` is silently `prefer` in sqlx: the URL and the
//!   environment are first checked by `pg_tls` (same errors, same files:
//!   a missing `sslrootcert`, a verifying mode without one, an encrypted or
//!   world-readable `sslkey`);
//! - sqlx's `allow` never tries TLS and its `prefer` never falls back to
//!   plaintext after a failed handshake: both are tried twice here, as libpq;
//! - sqlx's `require` ignores a root certificate: with one (named, or
//!   libpq's `~/.postgresql/root.crt`) the chain is checked (sqlx's
//!   `verify-ca`), as libpq;
//! - `sslrootcert=system` is a file named "system" to sqlx: the OS roots are
//!   handed to it instead;
//! - unknown URL parameters are logged by sqlx with their values: only the
//!   parameters below reach it.
//!
//! What cannot be mapped (sqlx builds its own rustls configuration): when it
//! verifies, sqlx also trusts the public web roots (webpki-roots) besides
//! `sslrootcert`, and its `verify-ca` still refuses a certificate for
//! another host name (it forgives only rustls's older `NotValidForName`), so
//! `verify-ca` behaves as `verify-full` for the catalog.

use crate::servers::pg::PgUrl;
pub(crate) use crate::servers::pg_tls::full_error;
use crate::servers::pg_tls::{
    default_file, split_params, PgConnect, Roots, SslMode, TlsSettings, TLS_PARAMETERS,
};
use base64::Engine;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The libpq parameters sqlx also knows (the rest would be logged, values and all).
const PASSED: [&str; 7] = [
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The sqlx options to try in turn (libpq's allow and prefer try twice).
pub(crate) fn attempts(url: &PgUrl) -> Result<Vec<PgConnectOptions>, String> {
    attempts_env(url, &|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

fn attempts_env(
    url: &PgUrl,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<PgConnectOptions>, String> {
    let (pairs, passed) = split_params(url.secret_url(), |k| PASSED.contains(&k))?;
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| !TLS_PARAMETERS.contains(&k.as_str()) && !PASSED.contains(&k.as_str()))
    {
        return Err(format!(
            "the catalog URL's parameter {k:?} is not supported (the catalog understands {} and the ssl* parameters)",
            PASSED.join(", ")
        ));
    }
    // The same checks, and the same messages, as every other connection.
    PgConnect::from_url(url.secret_url())?;
    let base = PgConnectOptions::from_str(&passed)
        .map_err(|e| format!("database URL: {e}"))?
        // The migrator's `_sqlx_migrations` lives next to the tables it describes.
        .options([("search_path", "firedrill")]);

    let settings = TlsSettings::read(&pairs, env)?;
    let mode = settings.mode;
    let system = matches!(settings.root, Some(Roots::System));
    let socket = base.get_socket().is_some();
    if mode == SslMode::Disable || socket {
        return Ok(vec![base.ssl_mode(PgSslMode::Disable)]);
    }
    let root = match settings.root {
        Some(Roots::File(p)) => Some(p),
        Some(Roots::System) => Some(PathBuf::from("system")),
        None => default_file("root.crt", env),
    };
    let cert = settings
        .cert
        .or_else(|| default_file("postgresql.crt", env));
    let mut tls = base.clone();
    if let Some(cert) = &cert {
        let key = settings
            .key
            .or_else(|| default_file("postgresql.key", env))
            .ok_or_else(|| format!("sslcert {} has no key: set sslkey", cert.display()))?;
        tls = tls.ssl_client_cert(cert).ssl_client_key(key);
    }
    match &root {
        Some(_) if system => tls = tls.ssl_root_cert_from_pem(system_roots()?),
        Some(root) => tls = tls.ssl_root_cert(root),
        None => {}
    }
    // libpq checks the chain whenever it has a root certificate.
    let checked = match (mode, root.is_some()) {
        (SslMode::VerifyFull, _) => PgSslMode::VerifyFull,
        (_, true) => PgSslMode::VerifyCa,
        (SslMode::Prefer, false) => PgSslMode::Prefer,
        (_, false) => PgSslMode::Require,
    };
    let tls = tls.ssl_mode(checked);
    let plain = base.ssl_mode(PgSslMode::Disable);
    Ok(match mode {
        SslMode::Allow => vec![plain, tls],
        SslMode::Prefer => vec![tls, plain],
        _ => vec![tls],
    })
}

/// The OS roots as PEM, for sqlx (which reads roots only from PEM).
fn system_roots() -> Result<Vec<u8>, String> {
    let mut pem = Vec::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    if pem.is_empty() {
        return Err("sslrootcert=system: no system root certificates found (install ca-certificates, or name the CA's file in sslrootcert)".into());
    }
    Ok(pem)
}

/// libpq's allow and prefer try the other way after the server refused
/// the session or the TLS handshake failed, not when the server cannot be
/// reached at all.
fn retry(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(io) => io
            .get_ref()
            .is_some_and(|inner| inner.is::<tokio_rustls::rustls::Error>()),
        _ => false,
    }
}

/// A small pool: the agent's writes share it, and a catalog that restarts
/// is reconnected to on the next write.
pub(crate) async fn pool(url: &PgUrl) -> Result<PgPool, String> {
    let attempts = attempts(url)?;
    let several = attempts.len() > 1;
    let mut failed = Vec::new();
    for options in attempts {
        let tls = !matches!(options.get_ssl_mode(), PgSslMode::Disable);
        match PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(e) => {
                let again = retry(&e);
                let message = full_error(&e);
                failed.push(match (several, tls) {
                    (false, _) => message,
                    (true, true) => format!("with TLS: {message}"),
                    (true, false) => format!("without TLS: {message}"),
                });
                if !again {
                    break;
                }
            }
        }
    }
    Err(failed.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modes(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<String>, String> {
        let url = PgUrl::parse(url).map_err(|e| e.to_string())?;
        Ok(attempts_env(&url, env)?
            .iter()
            .map(|o| format!("{:?}", o.get_ssl_mode()))
            .collect())
    }

    #[test]
    fn libpq_sslmodes_map_onto_sqlx_attempts() {
        let none = |_: &str| None;
        let m = |mode: &str| modes(&format!("postgres://u@db/x?sslmode={mode}"), &none).unwrap();
        assert_eq!(m("disable"), ["Disable"]);
        assert_eq!(m("allow"), ["Disable", "Require"]);
        assert_eq!(m("prefer"), ["Prefer", "Disable"]);
        assert_eq!(m("require"), ["Require"]);
        let e = modes("postgres://u@db/x?sslmode=verify-ca", &none).unwrap_err();
        assert!(e.contains("sslrootcert"), "{e}");
        let e = modes("postgres://u@db/x?sslmode=verify_full", &none).unwrap_err();
        assert!(e.contains("sslmode=\"verify_full\""), "{e}");
        // The environment too: sqlx alone would take a bad PGSSLMODE for prefer.
        let bogus = |k: &str| (k == "PGSSLMODE").then(|| "bogus".to_string());
        let e = modes("postgres://u@db/x", &bogus).unwrap_err();
        assert!(e.contains("PGSSLMODE"), "{e}");
        // The OS roots: verify-full by default, as libpq; weaker modes refused.
        assert_eq!(
            modes("postgres://u@db/x?sslrootcert=system", &none).unwrap(),
            ["VerifyFull"]
        );
        let e = modes(
            "postgres://u@db/x?sslrootcert=system&sslmode=require",
            &none,
        )
        .unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        // Sockets never use TLS.
        assert_eq!(
            modes("postgres://u@%2Ftmp%2Fs/x?sslmode=require", &none).unwrap(),
            ["Disable"]
        );
        // A parameter sqlx would log with its value is refused instead.
        let e = modes(
            "postgres://u@db/x?sslmode=require&secret_thing=hunter2",
            &none,
        )
        .unwrap_err();
        assert!(e.contains("secret_thing") && !e.contains("hunter2"), "{e}");
    }
}
