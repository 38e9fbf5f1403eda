//! TLS to PostgreSQL with libpq's settings: a private server with a test CA
//! that takes TLS connections only (`hostnossl ... reject`), a `hostssl`
//! trust rule and a client-certificate (`cert`) rule; every sslmode, wrong
//! CAs and wrong host names refused, no plaintext fallback where the mode
//! forbids it, and a backup and a drill (pg_dump, plugin sql included)
//! against it end to end.

use crate::backup_restore::{backup_id, file_store};
use crate::harness::{self, firedrill, output_text};
use firedrill::servers::pg::PgUrl;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub struct TlsServer {
    pub port: u16,
    dir: PathBuf,
}

impl TlsServer {
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `user` on database `db` at `host`, with libpq parameters `params`.
    pub fn url(&self, host: &str, user: &str, db: &str, params: &str) -> String {
        format!("postgres://{user}@{host}:{}/{db}?{params}", self.port)
    }
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The server reads its key as its own user (`postgres` when we are root).
fn give_to_server(p: &Path) {
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "running as root needs a `postgres` user");
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
}

/// The run's TLS-only server: certificate for `localhost` only (not for
/// 127.0.0.1, so that the two names tell verify-ca from verify-full);
/// `certuser` may create schemas in `postgres` (the catalog tests' catalog).
pub fn server() -> &'static TlsServer {
    static S: OnceLock<TlsServer> = OnceLock::new();
    S.get_or_init(|| {
        let dir = harness::tempdir("pg-tls");
        harness::self_signed_ca(&dir, "ca");
        harness::self_signed_ca(&dir, "other-ca");
        harness::issue_cert(
            &dir,
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        harness::issue_cert(
            &dir,
            "client",
            "/CN=certuser",
            "extendedKeyUsage=clientAuth\n",
        );
        give_to_server(&dir.join("server.key"));
        // The socket keeps the cluster's own password rule (its readiness check uses it).
        std::fs::write(
            dir.join("pg_hba.conf"),
            "local all all scram-sha-256\n\
             hostnossl all all all reject\n\
             hostssl all certuser all cert\n\
             hostssl all all all trust\n",
        )
        .unwrap();
        let settings = [
            "ssl=on".to_string(),
            format!("ssl_cert_file={}", dir.join("server.crt").display()),
            format!("ssl_key_file={}", dir.join("server.key").display()),
            format!("ssl_ca_file={}", dir.join("ca.crt").display()),
            format!("hba_file={}", dir.join("pg_hba.conf").display()),
        ];
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        let cluster =
            firedrill::servers::local_pg::LocalCluster::start_tcp(harness::scratch(), &settings)
                .unwrap_or_else(|e| panic!("{e}"));
        let s = TlsServer {
            port: cluster.port(),
            dir,
        };
        // Kept for the run; it dies with the test process (see local_pg).
        std::mem::forget(cluster);
        let admin = s.url(
            "localhost",
            "postgres",
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={}", s.file("ca.crt")),
        );
        run(
            &admin,
            "CREATE ROLE certuser LOGIN; GRANT CREATE ON DATABASE postgres TO certuser",
        )
        .unwrap();
        s
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Connects as the agent does; whether the session is encrypted, and who it is.
fn session(url: &str) -> Result<(bool, String), String> {
    let url = PgUrl::parse(url).map_err(|e| e.to_string())?;
    runtime().block_on(async {
        let c = url.connect().await.map_err(|e| e.to_string())?;
        let row = c
            .query_one(
                "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false), current_user::text",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok((row.get(0), row.get(1)))
    })
}

fn run(url: &str, sql: &str) -> Result<(), String> {
    let url = PgUrl::parse(url).map_err(|e| e.to_string())?;
    runtime().block_on(async {
        let c = url.connect().await.map_err(|e| e.to_string())?;
        c.batch_execute(sql).await.map_err(|e| e.to_string())
    })
}

fn refused(url: &str) -> String {
    match session(url) {
        Ok(s) => panic!("{url} connected ({s:?}): it must be refused"),
        Err(e) => e,
    }
}

#[test]
fn every_sslmode_against_a_tls_only_server() {
    let s = server();
    let (ca, other) = (s.file("ca.crt"), s.file("other-ca.crt"));
    let at = |host: &str, params: &str| s.url(host, "postgres", "postgres", params);

    // disable: the server takes TLS only.
    let e = refused(&at("127.0.0.1", "sslmode=disable"));
    assert!(e.contains("pg_hba.conf rejects"), "{e}");
    // allow tries plain first, then TLS; prefer (and libpq's default) TLS first.
    for params in ["sslmode=allow", "sslmode=prefer", "", "sslmode=require"] {
        let got = session(&at("127.0.0.1", params));
        assert_eq!(got, Ok((true, "postgres".into())), "{params:?}");
    }
    // verify-ca: the chain is checked, the name is not (the certificate is
    // for localhost only).
    let got = session(&at(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ));
    assert_eq!(got, Ok((true, "postgres".into())));
    let e = refused(&at(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={other}"),
    ));
    assert!(e.contains("invalid peer certificate"), "{e}");
    // require with a root certificate checks the chain too, as libpq does.
    let e = refused(&at(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={other}"),
    ));
    assert!(e.contains("invalid peer certificate"), "{e}");
    // verify-full: chain and name.
    let got = session(&at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    assert_eq!(got, Ok((true, "postgres".into())));
    let e = refused(&at(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    assert!(
        e.contains("invalid peer certificate") && e.contains("127.0.0.1"),
        "{e}"
    );
    // The system's roots do not know a private CA (sslrootcert=system means verify-full).
    let e = refused(&at("localhost", "sslrootcert=system"));
    assert!(
        e.contains("invalid peer certificate") || e.contains("no system root certificates"),
        "{e}"
    );
    let e = refused(&at("localhost", "sslmode=require&sslrootcert=system"));
    assert!(e.contains("verify-full"), "{e}");
    // Verifying with nothing to verify against is an error naming the setting.
    let e = refused(&at("localhost", "sslmode=verify-full"));
    assert!(e.contains("sslrootcert"), "{e}");
    // An unknown mode is an error naming the setting, not a silent prefer.
    let e = PgUrl::parse(&at("localhost", "sslmode=verify_full"))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("sslmode") && e.contains("verify_full"), "{e}");
}

#[test]
fn no_plaintext_fallback_where_the_mode_forbids_it() {
    let ca = server().file("ca.crt");
    // The run's ordinary server has no TLS at all.
    let plain = harness::postgres().url("postgres");
    for params in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        format!("sslmode=verify-full&sslrootcert={ca}"),
    ] {
        let e = refused(&format!("{plain}?{params}"));
        assert!(e.contains("does not support TLS"), "{params}: {e}");
    }
    // prefer and allow may fall back: that is what they mean.
    for params in ["sslmode=prefer", "sslmode=allow"] {
        let got = session(&format!("{plain}?{params}"));
        assert_eq!(got, Ok((false, "postgres".into())), "{params}");
    }
}

#[test]
fn a_client_certificate_logs_in_under_a_cert_rule() {
    let s = server();
    let verify = format!("sslmode=verify-full&sslrootcert={}", s.file("ca.crt"));
    let with_cert = format!(
        "{verify}&sslcert={}&sslkey={}",
        s.file("client.crt"),
        s.file("client.key")
    );
    let got = session(&s.url("localhost", "certuser", "postgres", &with_cert));
    assert_eq!(got, Ok((true, "certuser".into())));
    // Without the certificate the cert rule refuses the role.
    let e = refused(&s.url("localhost", "certuser", "postgres", &verify));
    assert!(e.contains("certificate"), "{e}");
    // A key others can read is refused, as libpq refuses it.
    let loose = s.dir.join("loose.key");
    std::fs::copy(s.dir.join("client.key"), &loose).unwrap();
    chmod(&loose, 0o644);
    let e = refused(&s.url(
        "localhost",
        "certuser",
        "postgres",
        &format!(
            "{verify}&sslcert={}&sslkey={}",
            s.file("client.crt"),
            loose.display()
        ),
    ));
    assert!(e.contains("sslkey") && e.contains("0600"), "{e}");
    // An encrypted key (libpq's sslpassword) is refused naming the fix.
    harness::openssl(
        &s.dir,
        &[
            "pkey",
            "-in",
            "client.key",
            "-aes256",
            "-passout",
            "pass:k3y-secret",
            "-out",
            "encrypted.key",
        ],
    );
    chmod(&s.dir.join("encrypted.key"), 0o600);
    let e = refused(&s.url(
        "localhost",
        "certuser",
        "postgres",
        &format!(
            "{verify}&sslcert={}&sslkey={}&sslpassword=k3y-secret",
            s.file("client.crt"),
            s.file("encrypted.key")
        ),
    ));
    assert!(e.contains("encrypted") && e.contains("sslpassword"), "{e}");
    assert!(!e.contains("k3y-secret"), "{e}");
}

#[test]
fn a_backup_and_a_drill_of_a_tls_only_server_pass_with_verify_full() {
    let s = server();
    let ca = s.file("ca.crt");
    let verify = format!("sslmode=verify-full&sslrootcert={ca}");
    run(
        &s.url("localhost", "postgres", "postgres", &verify),
        "CREATE DATABASE tlsapp",
    )
    .unwrap();
    run(
        &s.url("localhost", "postgres", "tlsapp", &verify),
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL);
         CREATE VIEW owners AS SELECT DISTINCT owner FROM accounts;
         INSERT INTO accounts SELECT g, 'o' || g % 7 FROM generate_series(1, 1000) g;",
    )
    .unwrap();
    let (store, _) = file_store();
    // The schema comes from pg_dump: it gets the same URL, TLS settings included.
    let id = backup_id(
        &[
            "--database-url",
            &s.url("localhost", "postgres", "tlsapp", &verify),
            "--store",
            &store,
            "--source",
            "tls",
        ],
        &[],
    );
    // The drill's settings from libpq's environment; a verifier plugin's
    // sql session must be encrypted too.
    let policies = harness::policy_dir(
        &["verifier-sql"],
        &[(
            "sql.toml",
            "world = \"verifier\"\nwasm = \"verifier_sql.wasm\"\n[grants]\nlogging = true\nconfig = true\nsql = { database = \"drill\" }\n[config]\n\"assert.encrypted\" = \"SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()\"",
        )],
    );
    let o = firedrill(
        &[
            "drill",
            "--json",
            "--store",
            &store,
            &id,
            "--drill-url",
            &format!("postgres://postgres@localhost:{}/postgres", s.port),
            "--policies",
            policies.to_str().unwrap(),
        ],
        &[
            ("PGSSLMODE", "verify-full".to_string()),
            ("PGSSLROOTCERT", ca.clone()),
        ],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["passed"], true, "{r:#}");
    let encrypted = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "assert.encrypted")
        .unwrap_or_else(|| panic!("no assert.encrypted: {r:#}"));
    assert_eq!(encrypted["status"], "pass", "{r:#}");
    // The same drill with a CA that did not sign the server is refused.
    let o = firedrill(
        &[
            "drill",
            "--store",
            &store,
            &id,
            "--drill-url",
            &format!("postgres://postgres@localhost:{}/postgres", s.port),
        ],
        &[
            ("PGSSLMODE", "verify-full".to_string()),
            ("PGSSLROOTCERT", s.file("other-ca.crt")),
        ],
    );
    assert!(!o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("invalid peer certificate"),
        "{}",
        output_text(&o)
    );
}
