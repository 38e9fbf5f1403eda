//! A PostgreSQL physical replication-protocol client: one connection in
//! replication mode (`replication=true`), for base backups (`BASE_BACKUP`)
//! and WAL streaming (`START_REPLICATION`). tokio-postgres cannot open such a
//! connection, so the wire protocol is spoken here with `postgres-protocol`'s
//! messages, over TCP, a Unix socket, or TLS with libpq's sslmode meaning
//! (the URL's TLS settings are read by `pg_tls`, as for every other connection).
//!
//! Invariants: the server is untrusted. No message larger than
//! [`MAX_MESSAGE`] is read into memory; names the server gives that a caller
//! may turn into paths (archive names, history file names) are checked; a
//! base backup's tar streams are walked as they pass, so an archive that ends
//! in the middle of a member is an error, and each archive handed on ends
//! with tar's end-of-archive blocks (added here when the server leaves them
//! out). A password never reaches a message: errors name the URL redacted.

use super::pg::PgUrl;
use super::pg_tls::{self, SslMode};
use super::ServerError;
use crate::archive::wal::{check_segment_size, history_name, Lsn};
use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{DataRowBody, ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;
use tokio_postgres::fallible_iterator::FallibleIterator;

/// The largest message accepted: WAL comes in pieces of at most 128 KiB and
/// base backups in smaller ones; this bounds what a hostile server can make
/// us allocate.
pub const MAX_MESSAGE: usize = (64 << 20) + 64;

/// libpq's default when the URL sets no `connect_timeout`... libpq has none;
/// a job must not hang on a server that never answers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// PostgreSQL's epoch (2000-01-01) in Unix seconds, for status updates.
const PG_EPOCH_UNIX: u64 = 946_684_800;

static ZEROS: [u8; 1024] = [0; 1024];

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// A backend message; CopyBothResponse is not one `postgres-protocol` parses.
enum Msg {
    CopyBoth,
    M(Message),
}

/// The transport with buffered reads and message framing.
struct Wire {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Wire {
    fn new(io: Box<dyn Io>) -> Wire {
        Wire {
            io,
            rbuf: BytesMut::with_capacity(64 << 10),
            wbuf: BytesMut::with_capacity(1024),
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        let r = async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        }
        .await;
        self.wbuf.clear();
        r.map_err(|e| format!("cannot send to the server: {e}"))
    }

    async fn fill(&mut self, n: usize) -> Result<(), String> {
        while self.rbuf.len() < n {
            self.rbuf.reserve((n - self.rbuf.len()).max(64 << 10));
            let got = self
                .io
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| format!("cannot read from the server: {e}"))?;
            if got == 0 {
                return Err("the server closed the connection".into());
            }
        }
        Ok(())
    }

    async fn read(&mut self) -> Result<Msg, String> {
        self.fill(5).await?;
        let tag = self.rbuf[0];
        let len =
            u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(format!(
                "the server sent a message of {len} bytes (type {:?}), more than the protocol allows here",
                tag as char
            ));
        }
        self.fill(len + 1).await?;
        if tag == b'W' {
            self.rbuf.advance(len + 1);
            return Ok(Msg::CopyBoth);
        }
        match Message::parse(&mut self.rbuf) {
            Ok(Some(m)) => Ok(Msg::M(m)),
            Ok(None) => Err("incomplete message".into()),
            Err(e) => Err(format!(
                "the server sent a malformed message (type {:?}): {e}",
                tag as char
            )),
        }
    }
}

/// A server's error, with the fix where one is known.
struct DbError {
    code: String,
    message: String,
    detail: Option<String>,
}

impl DbError {
    fn read(body: &ErrorResponseBody) -> DbError {
        let mut e = DbError {
            code: String::new(),
            message: String::new(),
            detail: None,
        };
        let mut fields = body.fields();
        while let Ok(Some(f)) = fields.next() {
            let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
            match f.type_() {
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                _ => {}
            }
        }
        e
    }

    fn describe(&self, user: &str) -> String {
        let text = format!("{} {}", self.message, self.detail.as_deref().unwrap_or(""));
        let fix = match self.code.as_str() {
            "28000" if text.contains("no pg_hba.conf entry") => format!(
                ": add a `host replication {user} <this agent's address> scram-sha-256` line to pg_hba.conf (hostssl to require TLS) and reload the server"
            ),
            "28000" if text.contains("pg_hba.conf rejects") => format!(
                ": a pg_hba.conf line rejects replication connections of {user}: put a `host replication {user} <this agent's address> scram-sha-256` line above it and reload the server"
            ),
            "28P01" => ": check the role's password in the URL".into(),
            "42501" if text.contains("replication") || text.contains("REPLICATION") || text.contains("WAL sender") => format!(
                ": the role needs the REPLICATION attribute (ALTER ROLE {user} REPLICATION)"
            ),
            "53300" if text.contains("max_wal_senders") => {
                ": raise max_wal_senders on the server (a restart is needed), or close other replication connections".into()
            }
            "55000" if text.contains("wal_level") => {
                ": set wal_level = replica on the server and restart it".into()
            }
            "55000" if text.contains("max_replication_slots") => {
                ": raise max_replication_slots on the server and restart it".into()
            }
            "58P01" if text.contains("removed") => {
                ": the server recycled WAL the stream still needed; stream through a replication slot and take a new base backup".into()
            }
            "57P01" | "57P02" | "57P03" => ": the server shut down or is starting up".into(),
            _ => String::new(),
        };
        let detail = match &self.detail {
            Some(d) => format!(" ({d})"),
            None => String::new(),
        };
        format!("{}{detail} [SQLSTATE {}]{fix}", self.message, self.code)
    }
}

/// Where the connection is in the protocol.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    /// A base backup or stream was left before it ended.
    Busy,
    /// The transport or the protocol failed.
    Broken,
}

/// What `IDENTIFY_SYSTEM` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
}

/// What `READ_REPLICATION_SLOT` tells of an existing slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub restart_lsn: Option<Lsn>,
    pub timeline: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct BaseBackupOptions {
    pub label: String,
    pub fast_checkpoint: bool,
    /// Include the WAL the backup needs in the base archive.
    pub wal: bool,
    pub manifest: bool,
    /// The server's MAX_RATE, in KiB/s (32 to 1048576).
    pub max_rate_kib: Option<u32>,
    /// PostgreSQL 17+: only the blocks changed since the backup whose
    /// manifest [`ReplicationConn::upload_manifest`] sent on this connection.
    pub incremental: bool,
}

/// One tablespace of a base backup: the main data directory has no oid and
/// no location. `size_kib` is the server's estimate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: Option<u32>,
    pub location: Option<String>,
    pub size_kib: Option<i64>,
}

#[derive(Debug)]
pub enum BackupEvent {
    /// A tar archive starts: `base`, or a tablespace's oid.
    Archive {
        name: String,
        location: Option<String>,
    },
    /// Bytes of the current archive.
    Data(Bytes),
    /// The backup manifest starts (after every archive).
    Manifest,
    ManifestData(Bytes),
    /// Bytes sent so far (PostgreSQL 15 and newer).
    Progress(u64),
}

#[derive(Debug)]
pub enum WalMessage {
    Data {
        start: Lsn,
        server_end: Lsn,
        bytes: Bytes,
    },
    Keepalive {
        server_end: Lsn,
        reply_requested: bool,
    },
    /// The timeline streamed ended (the server was promoted past it); the
    /// stream is over and the connection takes commands again.
    EndOfTimeline { next_timeline: u32, next_start: Lsn },
}

/// One connection in physical replication mode.
pub struct ReplicationConn {
    wire: Wire,
    redacted: String,
    user: String,
    server_version: String,
    version_num: i32,
    state: State,
}

/// Why one connection attempt failed, for libpq's allow/prefer retries.
enum Failure {
    /// Nothing answered: another TLS mode will not help.
    Unreachable(String),
    /// The TLS handshake failed, or the server refused the session: the
    /// other mode may work (pg_hba.conf's hostssl/hostnossl).
    Retry(String),
    Final(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Unreachable(m) | Failure::Retry(m) | Failure::Final(m) => m,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tls {
    No,
    /// Ask; go on without it if the server says no (prefer).
    Try,
    Must,
}

enum Target {
    Tcp {
        host: String,
        addr: Option<std::net::IpAddr>,
        port: u16,
    },
    Unix(PathBuf),
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::Tcp { host, port, .. } => format!("{host}:{port}"),
            Target::Unix(p) => p.display().to_string(),
        }
    }
}

struct Login<'a> {
    user: &'a str,
    password: Option<&'a [u8]>,
}

impl ReplicationConn {
    /// Connects with the URL's hosts (each in turn), TLS settings and
    /// `connect_timeout` (10 s when it has none), as the URL's role.
    pub async fn connect(url: &PgUrl) -> Result<ReplicationConn, ServerError> {
        let redacted = url.redacted();
        let fail = |message: String| ServerError::Replication {
            url: redacted.clone(),
            message,
        };
        let ws = pg_tls::wire_settings(url.secret_url())
            .map_err(|e| ServerError::Config(format!("database URL {redacted}: {e}")))?;
        let config = &ws.config;
        let user = match config.get_user() {
            Some(u) => u.to_string(),
            None => std::env::var("USER").map_err(|_| {
                fail("the URL names no role: add one (postgres://ROLE@host/db)".into())
            })?,
        };
        let login = Login {
            user: &user,
            password: config.get_password(),
        };
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        let mut hosts: Vec<Host> = config.get_hosts().to_vec();
        if hosts.is_empty() {
            hosts = vec![
                Host::Unix("/var/run/postgresql".into()),
                Host::Unix("/tmp".into()),
            ];
        }
        let ports = config.get_ports();
        let addrs = config.get_hostaddrs();
        let mut failures: Vec<String> = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let port = match ports.len() {
                0 => 5432,
                1 => ports[0],
                _ => ports.get(i).copied().unwrap_or(5432),
            };
            let target = match host {
                Host::Tcp(h) => Target::Tcp {
                    host: h.clone(),
                    addr: addrs.get(i).copied(),
                    port,
                },
                Host::Unix(dir) => Target::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            };
            let modes: &[Tls] = match (&target, ws.mode) {
                (Target::Unix(_), _) | (_, SslMode::Disable) => &[Tls::No],
                (_, SslMode::Allow) => &[Tls::No, Tls::Must],
                (_, SslMode::Prefer) => &[Tls::Try, Tls::No],
                _ => &[Tls::Must],
            };
            let mut tried: Vec<(Tls, String)> = Vec::new();
            for &tls in modes {
                let attempt = Self::attempt(&target, tls, &ws, &login, &redacted);
                let result = match tokio::time::timeout(timeout, attempt).await {
                    Ok(r) => r,
                    Err(_) => Err(Failure::Unreachable(format!(
                        "no answer within {}s (connect_timeout)",
                        timeout.as_secs()
                    ))),
                };
                match result {
                    Ok(conn) => return Ok(conn),
                    Err(f) => {
                        let again = matches!(f, Failure::Retry(_));
                        tried.push((tls, f.message().to_string()));
                        if !again {
                            break;
                        }
                    }
                }
            }
            let said = if tried.len() == 1 {
                tried.remove(0).1
            } else {
                tried
                    .into_iter()
                    .map(|(tls, m)| match tls {
                        Tls::No => format!("without TLS: {m}"),
                        _ => format!("with TLS: {m}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            failures.push(if hosts.len() > 1 {
                format!("{}: {said}", target.name())
            } else {
                said
            });
        }
        Err(fail(failures.join("; ")))
    }

    async fn attempt(
        target: &Target,
        tls: Tls,
        ws: &pg_tls::WireSettings,
        login: &Login<'_>,
        redacted: &str,
    ) -> Result<ReplicationConn, Failure> {
        let (io, encrypted): (Box<dyn Io>, bool) = match target {
            Target::Unix(path) => (
                Box::new(
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| Failure::Unreachable(format!("{}: {e}", path.display())))?,
                ),
                false,
            ),
            Target::Tcp { host, addr, port } => {
                let tcp = match addr {
                    Some(a) => tokio::net::TcpStream::connect((*a, *port)).await,
                    None => tokio::net::TcpStream::connect((host.as_str(), *port)).await,
                }
                .map_err(|e| Failure::Unreachable(format!("{host}:{port}: {e}")))?;
                let _ = tcp.set_nodelay(true);
                match tls {
                    Tls::No => (Box::new(tcp), false),
                    Tls::Try | Tls::Must => Self::start_tls(tcp, host, tls, ws).await?,
                }
            }
        };
        let mut conn = ReplicationConn {
            wire: Wire::new(io),
            redacted: redacted.to_string(),
            user: login.user.to_string(),
            server_version: String::new(),
            version_num: 0,
            state: State::Ready,
        };
        match conn.startup(login).await {
            // prefer went on without TLS: trying again without it is no other way.
            Err(Failure::Retry(m)) if tls == Tls::Try && !encrypted => Err(Failure::Final(m)),
            other => other,
        }?;
        Ok(conn)
    }

    async fn start_tls(
        mut tcp: tokio::net::TcpStream,
        host: &str,
        tls: Tls,
        ws: &pg_tls::WireSettings,
    ) -> Result<(Box<dyn Io>, bool), Failure> {
        let Some(config) = ws.tls.clone() else {
            return Ok((Box::new(tcp), false));
        };
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf)
            .await
            .map_err(|e| Failure::Unreachable(format!("cannot send to the server: {e}")))?;
        // One byte, read unbuffered: what follows an 'S' is the handshake.
        let answer = tcp
            .read_u8()
            .await
            .map_err(|e| Failure::Unreachable(format!("cannot read from the server: {e}")))?;
        match (answer, tls) {
            (b'S', _) => {
                let name = pg_tls::server_name(host).map_err(Failure::Final)?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| Failure::Retry(format!("TLS handshake: {e}")))?;
                Ok((Box::new(stream), true))
            }
            (b'N', Tls::Try) => Ok((Box::new(tcp), false)),
            (b'N', _) => Err(Failure::Final(format!(
                "the server does not accept TLS connections, and sslmode={} requires TLS: enable ssl on the server or lower sslmode",
                match ws.mode {
                    SslMode::VerifyCa => "verify-ca",
                    SslMode::VerifyFull => "verify-full",
                    SslMode::Allow => "allow",
                    _ => "require",
                }
            ))),
            (other, _) => Err(Failure::Final(format!(
                "the server answered the TLS request with {:?}: not a PostgreSQL server?",
                other as char
            ))),
        }
    }

    async fn startup(&mut self, login: &Login<'_>) -> Result<(), Failure> {
        let proto = |m: String| Failure::Final(m);
        frontend::startup_message(
            [
                ("user", login.user),
                ("replication", "true"),
                ("application_name", "firedrill"),
            ],
            &mut self.wire.wbuf,
        )
        .map_err(|e| Failure::Final(format!("the role name: {e}")))?;
        self.wire.flush().await.map_err(Failure::Unreachable)?;
        let need_password = || {
            login.password.ok_or_else(|| {
                Failure::Final(
                    "the server asks for a password and the URL has none: add it (or a password parameter)"
                        .into(),
                )
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = match self.wire.read().await.map_err(Failure::Unreachable)? {
                Msg::M(m) => m,
                Msg::CopyBoth => {
                    return Err(proto("unexpected CopyBothResponse during login".into()))
                }
            };
            match msg {
                Message::AuthenticationOk => {
                    if scram.is_some() {
                        return Err(proto(
                            "the server ended SCRAM authentication without proving it knows the password"
                                .into(),
                        ));
                    }
                    break;
                }
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(need_password()?, &mut self.wire.wbuf)
                        .map_err(|e| proto(format!("password: {e}")))?;
                    self.wire.flush().await.map_err(Failure::Unreachable)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(login.user.as_bytes(), need_password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wire.wbuf)
                        .map_err(|e| proto(format!("password: {e}")))?;
                    self.wire.flush().await.map_err(Failure::Unreachable)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut offered = Vec::new();
                    let mut mechanisms = body.mechanisms();
                    while let Some(m) = mechanisms
                        .next()
                        .map_err(|e| proto(format!("SASL mechanisms: {e}")))?
                    {
                        offered.push(m.to_string());
                    }
                    if !offered.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                        return Err(Failure::Final(format!(
                            "the server offers only SASL mechanisms {offered:?}; firedrill speaks SCRAM-SHA-256: allow scram-sha-256 for this role in pg_hba.conf"
                        )));
                    }
                    // No channel binding: "n" tells the server so, which
                    // (unlike "y") is no downgrade signal if it offers -PLUS.
                    let s = ScramSha256::new(need_password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        s.message(),
                        &mut self.wire.wbuf,
                    )
                    .map_err(|e| proto(format!("SCRAM: {e}")))?;
                    self.wire.flush().await.map_err(Failure::Unreachable)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| proto("SCRAM continuation without a start".into()))?;
                    s.update(body.data())
                        .map_err(|e| proto(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wire.wbuf)
                        .map_err(|e| proto(format!("SCRAM: {e}")))?;
                    self.wire.flush().await.map_err(Failure::Unreachable)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| proto("SCRAM end without a start".into()))?;
                    s.finish(body.data()).map_err(|e| {
                        proto(format!("the server's SCRAM proof is wrong ({e}): it does not know the password; is this the right server?"))
                    })?;
                }
                Message::AuthenticationGss
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationSspi
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGssContinue(_) => {
                    return Err(Failure::Final(
                        "the server asks for GSSAPI/SSPI/Kerberos authentication, which firedrill does not speak: use scram-sha-256 for this role in pg_hba.conf"
                            .into(),
                    ))
                }
                Message::ErrorResponse(body) => {
                    return Err(Failure::Retry(DbError::read(&body).describe(login.user)))
                }
                Message::NoticeResponse(_) => {}
                _ => return Err(proto("unexpected message during login".into())),
            }
        }
        loop {
            let msg = match self.wire.read().await.map_err(Failure::Unreachable)? {
                Msg::M(m) => m,
                Msg::CopyBoth => {
                    return Err(proto("unexpected CopyBothResponse during login".into()))
                }
            };
            match msg {
                Message::ParameterStatus(p) => self.parameter(&p),
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => {
                    return Err(Failure::Retry(DbError::read(&body).describe(login.user)))
                }
                _ => return Err(proto("unexpected message after login".into())),
            }
        }
        if self.version_num == 0 {
            return Err(proto(format!(
                "the server reported no readable server_version ({:?})",
                self.server_version
            )));
        }
        Ok(())
    }

    fn parameter(&mut self, p: &postgres_protocol::message::backend::ParameterStatusBody) {
        if let (Ok("server_version"), Ok(v)) = (p.name(), p.value()) {
            self.server_version = v.to_string();
            self.version_num = version_num(v).unwrap_or(0);
        }
    }

    /// The server's version as `server_version_num` gives it (150019 for 15.19).
    pub fn server_version_num(&self) -> i32 {
        self.version_num
    }

    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// Takes commands: a refused one leaves it so, a broken transport not.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    fn err(&self, message: impl Into<String>) -> ServerError {
        ServerError::Replication {
            url: self.redacted.clone(),
            message: message.into(),
        }
    }

    /// A transport or protocol failure: the connection is not used again.
    fn broken(&mut self, message: impl Into<String>) -> ServerError {
        self.state = State::Broken;
        self.err(message)
    }

    fn ready(&self) -> Result<(), ServerError> {
        match self.state {
            State::Ready => Ok(()),
            State::Busy => Err(self.err(
                "the connection is still inside a base backup or WAL stream that was left unfinished: open a new one",
            )),
            State::Broken => Err(self.err("the connection failed earlier: open a new one")),
        }
    }

    async fn read(&mut self) -> Result<Msg, ServerError> {
        match self.wire.read().await {
            Ok(m) => Ok(m),
            Err(e) => Err(self.broken(e)),
        }
    }

    async fn flush(&mut self) -> Result<(), ServerError> {
        match self.wire.flush().await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.broken(e)),
        }
    }

    async fn send_query(&mut self, sql: &str) -> Result<(), ServerError> {
        self.ready()?;
        frontend::query(sql, &mut self.wire.wbuf).map_err(|e| self.err(format!("command: {e}")))?;
        self.flush().await
    }

    fn command_error(&self, sql: &str, e: &DbError) -> ServerError {
        let verb = sql.split_whitespace().next().unwrap_or("");
        self.err(format!("{verb}: {}", e.describe(&self.user)))
    }

    /// Rows of every result set `sql` gives, as bytes.
    async fn query_raw(&mut self, sql: &str) -> Result<Vec<Vec<Option<Bytes>>>, ServerError> {
        self.send_query(sql).await?;
        let mut rows = Vec::new();
        let mut failed: Option<DbError> = None;
        loop {
            match self.read().await? {
                Msg::M(Message::DataRow(body)) => {
                    rows.push(row(&body).map_err(|e| self.broken(e))?);
                }
                Msg::M(Message::RowDescription(_))
                | Msg::M(Message::CommandComplete(_))
                | Msg::M(Message::EmptyQueryResponse)
                | Msg::M(Message::NoticeResponse(_)) => {}
                Msg::M(Message::ParameterStatus(p)) => self.parameter(&p),
                Msg::M(Message::ErrorResponse(body)) => failed = Some(DbError::read(&body)),
                Msg::M(Message::ReadyForQuery(_)) => break,
                _ => {
                    return Err(self.broken(format!(
                        "{}: the server started a copy a plain command cannot take",
                        sql.split_whitespace().next().unwrap_or("")
                    )))
                }
            }
        }
        match failed {
            Some(e) => Err(self.command_error(sql, &e)),
            None => Ok(rows),
        }
    }

    /// Runs a replication command (or SHOW); the rows of every result set,
    /// as text.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let rows = self.query_raw(sql).await?;
        rows.into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|c| c.map(|b| text(&b)).transpose())
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))
    }

    pub async fn identify_system(&mut self) -> Result<SystemInfo, ServerError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let bad = |what: &str| {
            self.err(format!(
                "IDENTIFY_SYSTEM: the server's answer has no valid {what}"
            ))
        };
        let r = rows.first().ok_or_else(|| bad("row"))?;
        let col = |i: usize| r.get(i).cloned().flatten();
        let system_id = col(0)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad("system id"))?;
        let timeline = col(1)
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| bad("timeline"))?;
        let xlogpos = col(2)
            .and_then(|s| s.parse::<Lsn>().ok())
            .ok_or_else(|| bad("WAL position"))?;
        Ok(SystemInfo {
            system_id,
            timeline,
            xlogpos,
        })
    }

    /// The server's WAL segment size in bytes.
    pub async fn segment_size(&mut self) -> Result<u64, ServerError> {
        let rows = self.simple_query("SHOW wal_segment_size").await?;
        let value = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default();
        let size = parse_size(&value)
            .ok_or_else(|| self.err(format!("SHOW wal_segment_size: {value:?} is not a size")))?;
        check_segment_size(size).map_err(|e| self.err(e))
    }

    /// A timeline's history file: its name (checked to be the one
    /// `timeline` has) and content.
    pub async fn timeline_history(
        &mut self,
        timeline: u32,
    ) -> Result<(String, Vec<u8>), ServerError> {
        let rows = self
            .query_raw(&format!("TIMELINE_HISTORY {timeline}"))
            .await?;
        let r = rows
            .first()
            .ok_or_else(|| self.err("TIMELINE_HISTORY: the server sent no row"))?;
        let name = r
            .first()
            .cloned()
            .flatten()
            .map(|b| text(&b))
            .transpose()
            .map_err(|e| self.err(e))?;
        let content = r.get(1).cloned().flatten();
        let want = history_name(timeline);
        match (name, content) {
            (Some(name), Some(content)) if name == want => Ok((name, content.to_vec())),
            (name, _) => Err(self.err(format!(
                "TIMELINE_HISTORY {timeline}: the server sent file {name:?}, expected {want:?}"
            ))),
        }
    }

    /// A slot's restart point (PostgreSQL 15 and newer); `None` when there
    /// is no such slot.
    pub async fn read_replication_slot(
        &mut self,
        slot: &str,
    ) -> Result<Option<SlotInfo>, ServerError> {
        check_slot_name(slot).map_err(|e| self.err(e))?;
        if self.version_num < 150000 {
            return Err(self.err(format!(
                "READ_REPLICATION_SLOT needs PostgreSQL 15 or newer (the server is {})",
                self.server_version
            )));
        }
        let rows = self
            .simple_query(&format!("READ_REPLICATION_SLOT \"{slot}\""))
            .await?;
        let r = rows
            .first()
            .ok_or_else(|| self.err("READ_REPLICATION_SLOT: the server sent no row"))?;
        let col = |i: usize| r.get(i).cloned().flatten();
        if col(0).is_none() {
            return Ok(None);
        }
        let restart_lsn = col(1)
            .map(|s| s.parse::<Lsn>())
            .transpose()
            .map_err(|e| self.err(format!("READ_REPLICATION_SLOT: restart_lsn {e}")))?;
        let timeline = col(2)
            .map(|s| s.parse::<u32>())
            .transpose()
            .map_err(|_| self.err("READ_REPLICATION_SLOT: restart_tli is not a timeline"))?;
        Ok(Some(SlotInfo {
            restart_lsn,
            timeline,
        }))
    }

    /// Creates a physical slot that holds WAL from now on.
    pub async fn create_physical_slot(&mut self, slot: &str) -> Result<(), ServerError> {
        check_slot_name(slot).map_err(|e| self.err(e))?;
        let sql = if self.version_num >= 150000 {
            format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL (RESERVE_WAL true)")
        } else {
            format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL RESERVE_WAL")
        };
        self.query_raw(&sql).await.map(|_| ())
    }

    /// [`ReplicationConn::create_physical_slot`], where a slot that exists
    /// already is no error: true when it was created now.
    pub async fn create_physical_slot_if_missing(
        &mut self,
        slot: &str,
    ) -> Result<bool, ServerError> {
        match self.create_physical_slot(slot).await {
            Ok(()) => Ok(true),
            Err(ServerError::Replication { message, .. })
                if message.contains("[SQLSTATE 42710]") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts `BASE_BACKUP` (PostgreSQL 13 and newer); the archives come
    /// from [`BaseBackup::next`].
    pub async fn base_backup(
        &mut self,
        opts: &BaseBackupOptions,
    ) -> Result<BaseBackup<'_>, ServerError> {
        let started = self.start_base_backup(opts).await?;
        self.stream_base_backup(started)
    }

    /// The first half of [`ReplicationConn::base_backup`]: the command
    /// sent, its start position and tablespaces read. A refusal (before any
    /// data) leaves the connection ready for another command; holding no
    /// borrow, the caller may then try again on it.
    pub async fn start_base_backup(
        &mut self,
        opts: &BaseBackupOptions,
    ) -> Result<BaseBackupStart, ServerError> {
        self.ready()?;
        if self.version_num < 130000 {
            return Err(self.err(format!(
                "base backups need PostgreSQL 13 or newer (the server is {})",
                self.server_version
            )));
        }
        if opts.label.contains('\0') || opts.label.len() > 1000 {
            return Err(self.err("the backup label must be text without NUL, at most 1000 bytes"));
        }
        if let Some(r) = opts.max_rate_kib {
            if !(32..=1_048_576).contains(&r) {
                return Err(self.err(format!(
                    "max rate {r} KiB/s: PostgreSQL takes 32 to 1048576"
                )));
            }
        }
        if opts.incremental && self.version_num < 170000 {
            return Err(self.err(format!(
                "incremental base backups need PostgreSQL 17 or newer (the server is {})",
                self.server_version
            )));
        }
        // Standard strings in the replication grammar: only ' needs doubling.
        let label = format!("'{}'", opts.label.replace('\'', "''"));
        let legacy = self.version_num < 150000;
        let sql = if legacy {
            let mut s = format!("BASE_BACKUP LABEL {label} PROGRESS");
            if opts.fast_checkpoint {
                s.push_str(" FAST");
            }
            if opts.wal {
                // With its WAL inside, the backup is whole without the
                // archive: never wait for archive_command (as pg_basebackup
                // -X does), which may be slow, failing, or firedrill itself.
                s.push_str(" WAL NOWAIT");
            }
            if let Some(r) = opts.max_rate_kib {
                s.push_str(&format!(" MAX_RATE {r}"));
            }
            s.push_str(if opts.manifest {
                " MANIFEST 'yes'"
            } else {
                " MANIFEST 'no'"
            });
            s
        } else {
            let mut o = vec![
                format!("LABEL {label}"),
                "PROGRESS".to_string(),
                format!(
                    "CHECKPOINT '{}'",
                    if opts.fast_checkpoint {
                        "fast"
                    } else {
                        "spread"
                    }
                ),
                format!("WAL {}", opts.wal),
                format!("WAIT {}", !opts.wal),
                format!("MANIFEST '{}'", if opts.manifest { "yes" } else { "no" }),
            ];
            if let Some(r) = opts.max_rate_kib {
                o.push(format!("MAX_RATE {r}"));
            }
            if opts.incremental {
                o.push("INCREMENTAL".into());
            }
            format!("BASE_BACKUP ({})", o.join(", "))
        };
        self.send_query(&sql).await?;
        self.state = State::Busy;
        let mut results = 0usize;
        let mut start: Option<(Lsn, u32)> = None;
        let mut tablespaces = Vec::new();
        let mut failed: Option<DbError> = None;
        loop {
            match self.read().await? {
                Msg::M(Message::RowDescription(_)) | Msg::M(Message::NoticeResponse(_)) => {}
                Msg::M(Message::ParameterStatus(p)) => self.parameter(&p),
                Msg::M(Message::DataRow(body)) => {
                    let r = text_row(&body).map_err(|e| self.broken(e))?;
                    match results {
                        0 => {
                            start = Some(lsn_tli(&r).ok_or_else(|| {
                                self.broken(
                                    "BASE_BACKUP: the start position is not an LSN and timeline",
                                )
                            })?)
                        }
                        1 => tablespaces.push(tablespace(&r).ok_or_else(|| {
                            self.broken("BASE_BACKUP: a tablespace row is not valid")
                        })?),
                        _ => {
                            return Err(self.broken("BASE_BACKUP: unexpected rows before the data"))
                        }
                    }
                }
                Msg::M(Message::CommandComplete(_)) => results += 1,
                Msg::M(Message::ErrorResponse(body)) => failed = Some(DbError::read(&body)),
                Msg::M(Message::ReadyForQuery(_)) => {
                    self.state = State::Ready;
                    return Err(match failed {
                        Some(e) => self.command_error(&sql, &e),
                        None => self.err("BASE_BACKUP: the server sent no data"),
                    });
                }
                Msg::M(Message::CopyOutResponse(_)) if failed.is_none() => break,
                _ => return Err(self.broken("BASE_BACKUP: unexpected message before the data")),
            }
        }
        let (start_lsn, start_timeline) =
            start.ok_or_else(|| self.broken("BASE_BACKUP: the server sent no start position"))?;
        if tablespaces.is_empty() {
            return Err(self.broken("BASE_BACKUP: the server listed no tablespace"));
        }
        Ok(BaseBackupStart {
            start_lsn,
            start_timeline,
            tablespaces,
            legacy,
        })
    }

    /// The second half of [`ReplicationConn::base_backup`]: the archives of
    /// the backup [`ReplicationConn::start_base_backup`] started.
    pub fn stream_base_backup(
        &mut self,
        started: BaseBackupStart,
    ) -> Result<BaseBackup<'_>, ServerError> {
        let BaseBackupStart {
            start_lsn,
            start_timeline,
            tablespaces,
            legacy,
        } = started;
        let mut b = BaseBackup {
            start_lsn,
            start_timeline,
            tablespaces,
            conn: self,
            legacy,
            part: Part::None,
            copies: 0,
            pending: VecDeque::new(),
            end: None,
            failed: None,
            done: false,
        };
        if legacy {
            b.legacy_copy()?;
        }
        Ok(b)
    }

    /// `UPLOAD_MANIFEST` (PostgreSQL 17+): sends an earlier backup's
    /// `backup_manifest`, against which the next `BASE_BACKUP (INCREMENTAL)`
    /// of this connection sends only what changed. The server checks it
    /// (its system identifier, the WAL summaries it needs) and refuses with
    /// a reason.
    pub async fn upload_manifest(&mut self, manifest: &[u8]) -> Result<(), ServerError> {
        if self.version_num < 170000 {
            return Err(self.err(format!(
                "incremental base backups need PostgreSQL 17 or newer (the server is {})",
                self.server_version
            )));
        }
        self.send_query("UPLOAD_MANIFEST").await?;
        let mut failed: Option<DbError> = None;
        let mut sent = false;
        loop {
            match self.read().await? {
                Msg::M(Message::CopyInResponse(_)) if !sent => {
                    // Pieces well under the server's message limit.
                    for piece in manifest.chunks(256 << 10) {
                        frontend::CopyData::new(piece)
                            .map_err(|e| self.broken(format!("UPLOAD_MANIFEST: {e}")))?
                            .write(&mut self.wire.wbuf);
                        self.flush().await?;
                    }
                    frontend::copy_done(&mut self.wire.wbuf);
                    self.flush().await?;
                    sent = true;
                }
                Msg::M(Message::NoticeResponse(_))
                | Msg::M(Message::RowDescription(_))
                | Msg::M(Message::DataRow(_))
                | Msg::M(Message::CommandComplete(_)) => {}
                Msg::M(Message::ParameterStatus(p)) => self.parameter(&p),
                Msg::M(Message::ErrorResponse(body)) => failed = Some(DbError::read(&body)),
                Msg::M(Message::ReadyForQuery(_)) => {
                    return match failed {
                        Some(e) => Err(self.command_error("UPLOAD_MANIFEST", &e)),
                        None if sent => Ok(()),
                        None => Err(self.err("UPLOAD_MANIFEST: the server asked for no manifest")),
                    };
                }
                _ => return Err(self.broken("UPLOAD_MANIFEST: unexpected message")),
            }
        }
    }

    /// Streams WAL from `start` on `timeline`, through `slot` when given.
    pub async fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: u32,
    ) -> Result<WalStream<'_>, ServerError> {
        let sql = match slot {
            Some(s) => {
                check_slot_name(s).map_err(|e| self.err(e))?;
                format!("START_REPLICATION SLOT \"{s}\" PHYSICAL {start} TIMELINE {timeline}")
            }
            None => format!("START_REPLICATION PHYSICAL {start} TIMELINE {timeline}"),
        };
        self.send_query(&sql).await?;
        self.state = State::Busy;
        let mut failed: Option<DbError> = None;
        let mut next: Option<(Lsn, u32)> = None;
        loop {
            match self.read().await? {
                Msg::CopyBoth if failed.is_none() => {
                    return Ok(WalStream {
                        conn: self,
                        finished: false,
                        pending_end: None,
                    })
                }
                Msg::M(Message::NoticeResponse(_))
                | Msg::M(Message::RowDescription(_))
                | Msg::M(Message::CommandComplete(_)) => {}
                Msg::M(Message::ParameterStatus(p)) => self.parameter(&p),
                // Asked for the very point a timeline ends: no stream, only the next timeline.
                Msg::M(Message::DataRow(body)) => {
                    let r = text_row(&body).map_err(|e| self.broken(e))?;
                    next = Some(tli_lsn(&r).ok_or_else(|| {
                        self.broken("START_REPLICATION: the next timeline is not valid")
                    })?);
                }
                Msg::M(Message::ErrorResponse(body)) => failed = Some(DbError::read(&body)),
                Msg::M(Message::ReadyForQuery(_)) => {
                    self.state = State::Ready;
                    if let Some(e) = failed {
                        return Err(self.command_error(&sql, &e));
                    }
                    let Some((next_start, next_timeline)) = next else {
                        return Err(self.err("START_REPLICATION: the server sent no stream"));
                    };
                    return Ok(WalStream {
                        conn: self,
                        finished: false,
                        pending_end: Some(WalMessage::EndOfTimeline {
                            next_timeline,
                            next_start,
                        }),
                    });
                }
                _ => return Err(self.broken("START_REPLICATION: unexpected message")),
            }
        }
    }
}

/// A base backup the server has started: where it starts, its tablespaces.
#[derive(Debug)]
pub struct BaseBackupStart {
    pub start_lsn: Lsn,
    pub start_timeline: u32,
    pub tablespaces: Vec<Tablespace>,
    legacy: bool,
}

/// Where a base backup's copy data goes.
enum Part {
    None,
    Archive(TarWalk),
    Manifest,
}

/// A base backup in progress; it holds the connection until it ends.
pub struct BaseBackup<'a> {
    pub start_lsn: Lsn,
    pub start_timeline: u32,
    pub tablespaces: Vec<Tablespace>,
    conn: &'a mut ReplicationConn,
    /// PostgreSQL 13 and 14: one copy per tablespace, then one for the manifest.
    legacy: bool,
    part: Part,
    copies: usize,
    pending: VecDeque<BackupEvent>,
    end: Option<(Lsn, u32)>,
    failed: Option<DbError>,
    done: bool,
}

impl BaseBackup<'_> {
    /// The next event; `None` once every archive and the manifest are done
    /// (and the connection takes commands again).
    pub async fn next(&mut self) -> Result<Option<BackupEvent>, ServerError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            if self.done {
                return Ok(None);
            }
            self.step().await?;
        }
    }

    /// The end position and timeline, once [`BaseBackup::next`] returned `None`.
    pub fn end(&self) -> Option<(Lsn, u32)> {
        if self.done {
            self.end
        } else {
            None
        }
    }

    fn broken(&mut self, m: impl Into<String>) -> ServerError {
        self.conn.broken(format!("BASE_BACKUP: {}", m.into()))
    }

    /// Ends the current archive, adding tar's end blocks if the server left them out.
    fn close_part(&mut self) -> Result<(), ServerError> {
        if let Part::Archive(walk) = std::mem::replace(&mut self.part, Part::None) {
            match walk.finish() {
                Ok(0) => {}
                Ok(n) => self
                    .pending
                    .push_back(BackupEvent::Data(Bytes::from_static(&ZEROS[..n]))),
                Err(e) => return Err(self.broken(e)),
            }
        }
        Ok(())
    }

    /// A PostgreSQL 13/14 CopyOutResponse: the next tablespace, or the manifest.
    fn legacy_copy(&mut self) -> Result<(), ServerError> {
        let i = self.copies;
        self.copies += 1;
        if let Some(t) = self.tablespaces.get(i) {
            let name = t
                .oid
                .map(|o| o.to_string())
                .unwrap_or_else(|| "base".into());
            self.pending.push_back(BackupEvent::Archive {
                name,
                location: t.location.clone(),
            });
            self.part = Part::Archive(TarWalk::default());
        } else if i == self.tablespaces.len() {
            self.pending.push_back(BackupEvent::Manifest);
            self.part = Part::Manifest;
        } else {
            return Err(self.broken("more copies than tablespaces and a manifest"));
        }
        Ok(())
    }

    async fn step(&mut self) -> Result<(), ServerError> {
        let msg = self.conn.read().await?;
        match msg {
            Msg::M(Message::CopyData(body)) => {
                if self.failed.is_some() {
                    return Ok(());
                }
                let data = body.into_bytes();
                if self.legacy {
                    self.copy_data(data)
                } else {
                    self.tagged(data)
                }
            }
            Msg::M(Message::CopyDone) => self.close_part(),
            Msg::M(Message::CopyOutResponse(_)) if self.legacy && self.failed.is_none() => {
                self.close_part()?;
                self.legacy_copy()
            }
            Msg::M(Message::RowDescription(_))
            | Msg::M(Message::NoticeResponse(_))
            | Msg::M(Message::CommandComplete(_)) => Ok(()),
            Msg::M(Message::ParameterStatus(p)) => {
                self.conn.parameter(&p);
                Ok(())
            }
            Msg::M(Message::DataRow(body)) => {
                let r = text_row(&body).map_err(|e| self.broken(e))?;
                self.end =
                    Some(lsn_tli(&r).ok_or_else(|| {
                        self.broken("the end position is not an LSN and timeline")
                    })?);
                Ok(())
            }
            Msg::M(Message::ErrorResponse(body)) => {
                self.failed = Some(DbError::read(&body));
                Ok(())
            }
            Msg::M(Message::ReadyForQuery(_)) => {
                self.conn.state = State::Ready;
                if let Some(e) = self.failed.take() {
                    let m = e.describe(&self.conn.user);
                    return Err(self.conn.err(format!("BASE_BACKUP: {m}")));
                }
                if !matches!(self.part, Part::None) {
                    return Err(self.broken("the server ended the command inside a copy"));
                }
                if self.end.is_none() {
                    return Err(self
                        .conn
                        .err("BASE_BACKUP: the server sent no end position"));
                }
                if self.legacy && self.copies < self.tablespaces.len() {
                    return Err(self.conn.err(format!(
                        "BASE_BACKUP: the server sent {} of {} tablespaces",
                        self.copies,
                        self.tablespaces.len()
                    )));
                }
                self.done = true;
                Ok(())
            }
            _ => Err(self.broken("unexpected message")),
        }
    }

    fn copy_data(&mut self, data: Bytes) -> Result<(), ServerError> {
        match &mut self.part {
            Part::Archive(walk) => {
                if let Err(e) = walk.feed(&data) {
                    return Err(self.broken(e));
                }
                self.pending.push_back(BackupEvent::Data(data));
            }
            Part::Manifest => self.pending.push_back(BackupEvent::ManifestData(data)),
            Part::None => return Err(self.broken("data outside any archive")),
        }
        Ok(())
    }

    /// A PostgreSQL 15+ copy message: its first byte says what it is.
    fn tagged(&mut self, data: Bytes) -> Result<(), ServerError> {
        let Some(&kind) = data.first() else {
            return Err(self.broken("an empty copy message"));
        };
        let rest = data.slice(1..);
        match kind {
            b'n' => {
                self.close_part()?;
                let mut fields = rest.split(|&b| b == 0);
                let name = fields
                    .next()
                    .map(|n| String::from_utf8_lossy(n).into_owned());
                let location = fields
                    .next()
                    .map(|n| String::from_utf8_lossy(n).into_owned());
                let name = name
                    .as_deref()
                    .and_then(|n| n.strip_suffix(".tar"))
                    .filter(|n| {
                        *n == "base"
                            || (!n.is_empty()
                                && n.len() <= 10
                                && n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .map(str::to_string);
                let Some(name) = name else {
                    return Err(
                        self.broken("an archive name that is neither base.tar nor <oid>.tar")
                    );
                };
                self.pending.push_back(BackupEvent::Archive {
                    name,
                    location: location.filter(|l| !l.is_empty()),
                });
                self.part = Part::Archive(TarWalk::default());
                Ok(())
            }
            b'd' => self.copy_data(rest),
            b'p' => {
                if rest.len() != 8 {
                    return Err(self.broken("a progress message of the wrong size"));
                }
                let done = i64::from_be_bytes(rest[..8].try_into().unwrap_or([0; 8]));
                self.pending
                    .push_back(BackupEvent::Progress(done.max(0) as u64));
                Ok(())
            }
            b'm' => {
                self.close_part()?;
                self.pending.push_back(BackupEvent::Manifest);
                self.part = Part::Manifest;
                Ok(())
            }
            other => Err(self.broken(format!(
                "a copy message of unknown type {:?}",
                other as char
            ))),
        }
    }
}

/// Follows a tar stream's headers as it passes, to know where it ends.
#[derive(Default)]
struct TarWalk {
    /// Member data (with padding) still to pass before the next header.
    skip: u64,
    header: Vec<u8>,
    zero_blocks: u8,
    ended: bool,
}

impl TarWalk {
    fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() && !self.ended {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                data = &data[n..];
                self.skip -= n as u64;
                continue;
            }
            let n = (512 - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() < 512 {
                break;
            }
            let h = std::mem::take(&mut self.header);
            if h.iter().all(|&b| b == 0) {
                self.zero_blocks += 1;
                self.ended = self.zero_blocks == 2;
                continue;
            }
            if self.zero_blocks > 0 {
                return Err("the tar archive has a member after an end-of-archive block".into());
            }
            self.skip = tar_member_data(&h)?;
        }
        Ok(())
    }

    /// How many zero bytes complete the archive (0, 512 or 1024).
    fn finish(self) -> Result<usize, String> {
        if self.skip > 0 || !self.header.is_empty() {
            return Err("a tar archive ended in the middle of a member (truncated)".into());
        }
        Ok(match self.zero_blocks {
            0 => 1024,
            1 => 512,
            _ => 0,
        })
    }
}

/// The bytes of data (padded to blocks) that follow a tar header.
fn tar_member_data(h: &[u8]) -> Result<u64, String> {
    let stored = octal(&h[148..156]).ok_or("a tar header with an unreadable checksum")?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u64
            }
        })
        .sum();
    if sum != stored {
        return Err("a tar header's checksum is wrong (not a tar stream, or corrupt)".into());
    }
    let field = &h[124..136];
    let size = if field[0] & 0x80 != 0 {
        // base-256, for members of 8 GiB and more
        field[1..]
            .iter()
            .fold(0u64, |a, &b| a.saturating_mul(256).saturating_add(b as u64))
    } else {
        octal(field).ok_or("a tar header with an unreadable size")?
    };
    // As tar readers do: links, directories, devices and fifos carry no data.
    if matches!(h[156], b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
        return Ok(0);
    }
    Ok(size.div_ceil(512).saturating_mul(512))
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// A WAL stream; it holds the connection until it ends or is stopped.
pub struct WalStream<'a> {
    conn: &'a mut ReplicationConn,
    finished: bool,
    pending_end: Option<WalMessage>,
}

impl WalStream<'_> {
    pub async fn next(&mut self) -> Result<WalMessage, ServerError> {
        if let Some(m) = self.pending_end.take() {
            self.finished = true;
            return Ok(m);
        }
        if self.finished {
            return Err(self.conn.err("the WAL stream is over"));
        }
        loop {
            match self.conn.read().await? {
                Msg::M(Message::CopyData(body)) => {
                    let data = body.into_bytes();
                    match data.first() {
                        Some(b'w') if data.len() >= 25 => {
                            return Ok(WalMessage::Data {
                                start: Lsn(be_u64(&data[1..9])),
                                server_end: Lsn(be_u64(&data[9..17])),
                                bytes: data.slice(25..),
                            })
                        }
                        Some(b'k') if data.len() >= 18 => {
                            return Ok(WalMessage::Keepalive {
                                server_end: Lsn(be_u64(&data[1..9])),
                                reply_requested: data[17] != 0,
                            })
                        }
                        _ => {
                            return Err(self.conn.broken(
                                "START_REPLICATION: a stream message of unknown type or size",
                            ))
                        }
                    }
                }
                // The timeline ended here: the server says which comes next.
                Msg::M(Message::CopyDone) => {
                    frontend::copy_done(&mut self.conn.wire.wbuf);
                    self.conn.flush().await?;
                    let next = self.drain().await?;
                    self.finished = true;
                    let Some((next_start, next_timeline)) = next else {
                        return Err(self.conn.err(
                            "START_REPLICATION: the server ended the stream without naming a next timeline",
                        ));
                    };
                    return Ok(WalMessage::EndOfTimeline {
                        next_timeline,
                        next_start,
                    });
                }
                Msg::M(Message::NoticeResponse(_)) => {}
                Msg::M(Message::ParameterStatus(p)) => self.conn.parameter(&p),
                Msg::M(Message::ErrorResponse(body)) => {
                    let e = DbError::read(&body);
                    // Up to ReadyForQuery, if the server still sends it.
                    let _ = self.drain().await;
                    self.finished = true;
                    let m = e.describe(&self.conn.user);
                    return Err(self.conn.err(format!("START_REPLICATION: {m}")));
                }
                _ => return Err(self.conn.broken("START_REPLICATION: unexpected message")),
            }
        }
    }

    /// Reads to ReadyForQuery, skipping stream data; the next timeline if the server named one.
    async fn drain(&mut self) -> Result<Option<(Lsn, u32)>, ServerError> {
        let mut next = None;
        let mut failed: Option<DbError> = None;
        loop {
            match self.conn.read().await? {
                Msg::M(Message::DataRow(body)) => {
                    let r = text_row(&body).map_err(|e| self.conn.broken(e))?;
                    next = Some(tli_lsn(&r).ok_or_else(|| {
                        self.conn
                            .broken("START_REPLICATION: the next timeline is not valid")
                    })?);
                }
                Msg::M(Message::ErrorResponse(body)) => failed = Some(DbError::read(&body)),
                Msg::M(Message::ReadyForQuery(_)) => {
                    self.conn.state = State::Ready;
                    return match failed {
                        Some(e) => {
                            let m = e.describe(&self.conn.user);
                            Err(self.conn.err(format!("START_REPLICATION: {m}")))
                        }
                        None => Ok(next),
                    };
                }
                Msg::M(Message::ParameterStatus(p)) => self.conn.parameter(&p),
                Msg::M(_) => {}
                Msg::CopyBoth => {
                    return Err(self.conn.broken("START_REPLICATION: unexpected message"))
                }
            }
        }
    }

    /// Tells the server how far WAL was written, flushed and applied
    /// (physical slots keep WAL from `flush` on).
    pub async fn status_update(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ServerError> {
        if self.finished {
            return Err(self.conn.err("the WAL stream is over"));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let micros = (now.as_micros() as i64) - (PG_EPOCH_UNIX as i64) * 1_000_000;
        let mut m = Vec::with_capacity(34);
        m.push(b'r');
        m.extend_from_slice(&write.0.to_be_bytes());
        m.extend_from_slice(&flush.0.to_be_bytes());
        m.extend_from_slice(&apply.0.to_be_bytes());
        m.extend_from_slice(&micros.to_be_bytes());
        m.push(reply_requested as u8);
        frontend::CopyData::new(&m[..])
            .map_err(|e| self.conn.err(format!("status update: {e}")))?
            .write(&mut self.conn.wire.wbuf);
        self.conn.flush().await
    }

    /// Ends the stream; the connection then takes commands again.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if self.finished {
            return Ok(());
        }
        frontend::copy_done(&mut self.conn.wire.wbuf);
        self.conn.flush().await?;
        self.drain().await.map(|_| ())
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn row(body: &DataRowBody) -> Result<Vec<Option<Bytes>>, String> {
    let buf = body.buffer_bytes();
    let mut out = Vec::new();
    let mut ranges = body.ranges();
    while let Some(r) = ranges
        .next()
        .map_err(|e| format!("the server sent a malformed row: {e}"))?
    {
        out.push(r.map(|r| buf.slice(r)));
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec())
        .map_err(|_| "the server sent a value that is not UTF-8".to_string())
}

fn text_row(body: &DataRowBody) -> Result<Vec<Option<String>>, String> {
    row(body)?
        .into_iter()
        .map(|c| c.map(|b| text(&b)).transpose())
        .collect()
}

/// (LSN text, timeline) rows: BASE_BACKUP's start and end.
fn lsn_tli(r: &[Option<String>]) -> Option<(Lsn, u32)> {
    let lsn = r.first()?.as_deref()?.parse().ok()?;
    let tli = r.get(1)?.as_deref()?.parse().ok()?;
    Some((lsn, tli))
}

/// (timeline, LSN text) rows: the next timeline after a stream.
fn tli_lsn(r: &[Option<String>]) -> Option<(Lsn, u32)> {
    let tli = r.first()?.as_deref()?.parse().ok()?;
    let lsn = r.get(1)?.as_deref()?.parse().ok()?;
    Some((lsn, tli))
}

fn tablespace(r: &[Option<String>]) -> Option<Tablespace> {
    let oid = match r.first()? {
        Some(s) => Some(s.parse().ok()?),
        None => None,
    };
    let size_kib = match r.get(2).cloned().flatten() {
        Some(s) => Some(s.parse().ok()?),
        None => None,
    };
    Some(Tablespace {
        oid,
        location: r.get(1).cloned().flatten(),
        size_kib,
    })
}

/// `server_version` as `server_version_num`: "15.19 (Debian ...)" is
/// 150019, "18.1" 180001, "18beta1" 180000, "9.6.3" 90603.
pub fn version_num(v: &str) -> Option<i32> {
    let head = v
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = head.split('.').filter(|p| !p.is_empty());
    let major: i32 = parts.next()?.parse().ok()?;
    let minor: i32 = parts.next().map(|p| p.parse().ok()).unwrap_or(Some(0))?;
    if major >= 10 {
        Some(major * 10000 + minor)
    } else {
        let patch: i32 = parts.next().map(|p| p.parse().ok()).unwrap_or(Some(0))?;
        Some(major * 10000 + minor * 100 + patch)
    }
}

/// A GUC size as SHOW prints it ("16MB", "1GB", "8192").
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(|b| b.is_ascii_digit()).count();
    let n: u64 = s[..digits].parse().ok()?;
    let unit = match s[digits..].trim() {
        "" | "B" => 1u64,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Slot names as PostgreSQL allows them: lower-case letters, digits and `_`, 1 to 63.
pub fn check_slot_name(slot: &str) -> Result<(), String> {
    if (1..=63).contains(&slot.len())
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(())
    } else {
        Err(format!(
            "replication slot name {slot:?}: use 1 to 63 lower-case letters, digits and underscores"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers::local_pg::LocalCluster;

    const SETTINGS: [&str; 2] = ["wal_level=replica", "max_wal_senders=10"];

    /// Outside the runtime: the cluster waits for its server with the blocking client.
    async fn start(parent: &tempfile::TempDir) -> LocalCluster {
        let path = parent.path().to_path_buf();
        tokio::task::spawn_blocking(move || LocalCluster::start_tcp(&path, &SETTINGS))
            .await
            .unwrap()
            .expect("a local cluster")
    }

    #[test]
    fn versions_sizes_and_slot_names_are_read_as_postgres_writes_them() {
        assert_eq!(version_num("15.19 (Debian 15.19-0+deb12u1)"), Some(150019));
        assert_eq!(version_num("18.1"), Some(180001));
        assert_eq!(version_num("18beta1"), Some(180000));
        assert_eq!(version_num("9.6.3"), Some(90603));
        assert_eq!(version_num("x"), None);
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("16 MB"), Some(16 << 20));
        assert_eq!(parse_size("16XB"), None);
        assert!(check_slot_name("firedrill_1").is_ok());
        for bad in ["", "Firedrill", "a-b", "a\"b", &"a".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad}");
        }
    }

    fn header(name: &str, size: u64, kind: u8) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    #[test]
    fn a_tar_stream_is_completed_or_refused_when_truncated() {
        let mut tar = header("PG_VERSION", 3, b'0');
        tar.extend_from_slice(b"15\n");
        tar.resize(1024, 0);
        tar.extend(header("global", 0, b'5'));
        // Fed in odd pieces, as copy messages split it.
        let mut w = TarWalk::default();
        for piece in tar.chunks(100) {
            w.feed(piece).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 1024);
        let mut w = TarWalk::default();
        w.feed(&tar).unwrap();
        w.feed(&[0; 1024]).unwrap();
        assert_eq!(w.finish().unwrap(), 0);
        let mut w = TarWalk::default();
        w.feed(&tar[..600]).unwrap();
        assert!(w.finish().unwrap_err().contains("truncated"));
        let mut bad = tar.clone();
        bad[0] = b'Q';
        assert!(TarWalk::default()
            .feed(&bad)
            .unwrap_err()
            .contains("checksum"));
    }

    /// Names and whether the archive ends with tar's two zero blocks.
    fn tar_names(b: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        let mut at = 0;
        loop {
            assert!(
                at + 512 <= b.len(),
                "the archive has no end-of-archive blocks"
            );
            let h = &b[at..at + 512];
            if h.iter().all(|&x| x == 0) {
                assert!(b.len() >= at + 1024, "only one end block");
                assert!(b[at..].iter().all(|&x| x == 0), "data after the end");
                return names;
            }
            let end = h[..100].iter().position(|&x| x == 0).unwrap_or(100);
            names.push(String::from_utf8_lossy(&h[..end]).into_owned());
            let size = octal(&h[124..136]).unwrap();
            let data = if matches!(h[156], b'0' | 0) {
                size.div_ceil(512) * 512
            } else {
                0
            };
            at += 512 + data as usize;
        }
    }

    #[tokio::test]
    async fn identify_system_segment_size_and_slots() {
        let parent = tempfile::tempdir().unwrap();
        let cluster = start(&parent).await;
        let client = cluster.url("postgres").connect().await.unwrap();
        let mut conn = ReplicationConn::connect(&cluster.url("postgres"))
            .await
            .unwrap();
        assert!(
            conn.server_version_num() >= 130000,
            "{}",
            conn.server_version_num()
        );
        assert!(!conn.redacted().is_empty());
        let sys = conn.identify_system().await.unwrap();
        let id: i64 = client
            .query_one("SELECT system_identifier FROM pg_control_system()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(sys.system_id, id.to_string());
        assert_eq!(sys.timeline, 1);
        assert!(sys.xlogpos > Lsn(0));
        assert_eq!(conn.segment_size().await.unwrap(), 16 << 20);
        // Timeline 1 has no history file: the server's error comes through.
        let e = conn.timeline_history(1).await.unwrap_err().to_string();
        assert!(e.contains("TIMELINE_HISTORY"), "{e}");
        assert!(conn.create_physical_slot("Bad-Name").await.is_err());
        conn.create_physical_slot("fd_slot").await.unwrap();
        assert!(!conn
            .create_physical_slot_if_missing("fd_slot")
            .await
            .unwrap());
        let restart: String = client
            .query_one(
                "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'fd_slot'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if conn.server_version_num() >= 150000 {
            let slot = conn
                .read_replication_slot("fd_slot")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(slot.restart_lsn, Some(restart.parse().unwrap()));
            assert_eq!(slot.timeline, Some(1));
            assert_eq!(conn.read_replication_slot("fd_none").await.unwrap(), None);
        } else {
            let e = conn.read_replication_slot("fd_slot").await.unwrap_err();
            assert!(e.to_string().contains("15"), "{e}");
        }
        // Still usable after the errors above.
        assert_eq!(
            conn.identify_system().await.unwrap().system_id,
            sys.system_id
        );
    }

    #[tokio::test]
    async fn a_base_backup_gives_complete_tars_and_a_manifest() {
        let parent = tempfile::tempdir().unwrap();
        let cluster = start(&parent).await;
        let mut conn = ReplicationConn::connect(&cluster.url("postgres"))
            .await
            .unwrap();
        let opts = BaseBackupOptions {
            label: "firedrill's test".into(),
            fast_checkpoint: true,
            wal: false,
            manifest: true,
            max_rate_kib: None,
            incremental: false,
        };
        let mut backup = conn.base_backup(&opts).await.unwrap();
        assert_eq!(backup.start_timeline, 1);
        assert_eq!(backup.tablespaces.len(), 1);
        assert_eq!(backup.tablespaces[0].oid, None);
        let start = backup.start_lsn;
        let mut archives: Vec<(String, Vec<u8>)> = Vec::new();
        let mut manifest: Option<Vec<u8>> = None;
        let mut progress = 0;
        while let Some(e) = backup.next().await.unwrap() {
            match e {
                BackupEvent::Archive { name, location } => {
                    assert!(manifest.is_none());
                    assert_eq!(location, None);
                    archives.push((name, Vec::new()));
                }
                BackupEvent::Data(b) => archives.last_mut().unwrap().1.extend_from_slice(&b),
                BackupEvent::Manifest => manifest = Some(Vec::new()),
                BackupEvent::ManifestData(b) => manifest.as_mut().unwrap().extend_from_slice(&b),
                BackupEvent::Progress(p) => progress = p,
            }
        }
        let (end, tli) = backup.end().unwrap();
        assert!(end >= start && tli == 1);
        assert_eq!(archives.len(), 1);
        assert_eq!(archives[0].0, "base");
        let names = tar_names(&archives[0].1);
        assert!(names.iter().any(|n| n == "PG_VERSION"), "{names:?}");
        assert!(names.iter().any(|n| n == "global/pg_control"), "{names:?}");
        assert!(names.iter().any(|n| n == "backup_label"), "{names:?}");
        let manifest: serde_json::Value = serde_json::from_slice(&manifest.unwrap()).unwrap();
        assert!(manifest.get("PostgreSQL-Backup-Manifest-Version").is_some());
        if conn.server_version_num() >= 150000 {
            assert!(progress > 0);
        }
        // The connection takes commands again, and another backup: with
        // its WAL, at a bounded rate, without a manifest.
        conn.identify_system().await.unwrap();
        let opts = BaseBackupOptions {
            label: "second".into(),
            fast_checkpoint: true,
            wal: true,
            manifest: false,
            max_rate_kib: Some(1 << 20),
            incremental: false,
        };
        let mut backup = conn.base_backup(&opts).await.unwrap();
        let mut tar = Vec::new();
        while let Some(e) = backup.next().await.unwrap() {
            match e {
                BackupEvent::Data(b) => tar.extend_from_slice(&b),
                BackupEvent::Manifest | BackupEvent::ManifestData(_) => panic!("a manifest"),
                _ => {}
            }
        }
        assert!(backup.end().is_some());
        let names = tar_names(&tar);
        assert!(
            names.iter().any(|n| n.starts_with("pg_wal/0000000100")),
            "{names:?}"
        );
        let e = conn
            .base_backup(&BaseBackupOptions {
                max_rate_kib: Some(1),
                ..opts
            })
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("32"), "{e}");
    }

    #[tokio::test]
    async fn streaming_receives_new_wal_reports_progress_and_stops() {
        let parent = tempfile::tempdir().unwrap();
        let cluster = start(&parent).await;
        let client = cluster.url("postgres").connect().await.unwrap();
        let mut conn = ReplicationConn::connect(&cluster.url("postgres"))
            .await
            .unwrap();
        conn.create_physical_slot("fd_stream").await.unwrap();
        let sys = conn.identify_system().await.unwrap();
        let restart: String = client
            .query_one(
                "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'fd_stream'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let start: Lsn = restart.parse().unwrap();
        let mut stream = conn
            .start_replication(Some("fd_stream"), start, sys.timeline)
            .await
            .unwrap();
        client
            .batch_execute(
                "CREATE TABLE t (v text); INSERT INTO t SELECT 'firedrill-marker-' || g FROM generate_series(1, 100) g",
            )
            .await
            .unwrap();
        let target: String = client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let target: Lsn = target.parse().unwrap();
        let mut wal = Vec::new();
        let mut at = start;
        let guard = tokio::time::timeout(Duration::from_secs(120), async {
            while at < target {
                match stream.next().await.unwrap() {
                    WalMessage::Data { start, bytes, .. } => {
                        assert_eq!(start, at, "contiguous");
                        at = Lsn(start.0 + bytes.len() as u64);
                        wal.extend_from_slice(&bytes);
                    }
                    WalMessage::Keepalive {
                        reply_requested, ..
                    } => {
                        if reply_requested {
                            stream.status_update(at, at, Lsn(0), false).await.unwrap();
                        }
                    }
                    m => panic!("{m:?}"),
                }
            }
        })
        .await;
        assert!(guard.is_ok(), "no WAL up to {target} (got to {at})");
        assert!(memchr::memmem::find(&wal, b"firedrill-marker-42").is_some());
        stream.status_update(at, at, Lsn(0), false).await.unwrap();
        stream.stop().await.unwrap();
        assert_eq!(
            conn.identify_system().await.unwrap().system_id,
            sys.system_id
        );
        // The slot moved to what was reported flushed.
        let restart: String = client
            .query_one(
                "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'fd_stream'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(restart.parse::<Lsn>().unwrap(), at);
    }

    #[tokio::test]
    async fn logins_by_password_and_refusals_name_their_fix() {
        let parent = tempfile::tempdir().unwrap();
        let cluster = start(&parent).await;
        let client = cluster.url("postgres").connect().await.unwrap();
        client
            .batch_execute(
                "CREATE ROLE fd_repl LOGIN REPLICATION PASSWORD 'sekrit-right-1';
                 CREATE ROLE fd_plain LOGIN PASSWORD 'sekrit-plain-2';
                 CREATE ROLE fd_clear LOGIN REPLICATION PASSWORD 'sekrit-clear-4';
                 CREATE ROLE fd_nohba LOGIN REPLICATION PASSWORD 'sekrit-nohba-5';
                 SET password_encryption = 'md5';
                 CREATE ROLE fd_md5 LOGIN REPLICATION PASSWORD 'sekrit-md5-3';",
            )
            .await
            .unwrap();
        let hba = cluster.dir().join("data/pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        let mut new = String::from(
            "host replication fd_repl 127.0.0.1/32 scram-sha-256\n\
             host replication fd_plain 127.0.0.1/32 scram-sha-256\n\
             host replication fd_md5 127.0.0.1/32 md5\n\
             host replication fd_clear 127.0.0.1/32 password\n\
             host replication postgres 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 trust\n",
        );
        for line in old.lines().filter(|l| l.starts_with("local")) {
            new.push_str(line);
            new.push('\n');
        }
        // Rewritten in place: owner and mode stay the server's.
        std::fs::write(&hba, new).unwrap();
        client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
        let url = cluster.url("postgres");
        let login = |u: &str, p: &str| url.with_login(u, p);
        // The reload is asynchronous: wait until the new rules answer.
        let mut refused = String::new();
        for _ in 0..200 {
            match ReplicationConn::connect(&login("fd_nohba", "sekrit-nohba-5")).await {
                Err(e) if e.to_string().contains("no pg_hba.conf entry") => {
                    refused = e.to_string();
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert!(
            refused.contains("host replication fd_nohba") && refused.contains("28000"),
            "{refused}"
        );
        assert!(!refused.contains("sekrit"), "{refused}");
        for (user, password) in [
            ("fd_repl", "sekrit-right-1"),
            ("fd_md5", "sekrit-md5-3"),
            ("fd_clear", "sekrit-clear-4"),
        ] {
            let mut c = ReplicationConn::connect(&login(user, password))
                .await
                .unwrap_or_else(|e| panic!("{user}: {e}"));
            c.identify_system().await.unwrap();
        }
        let e = ReplicationConn::connect(&login("fd_repl", "wrong-sekrit-9"))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("28P01") && !e.contains("sekrit"), "{e}");
        // prefer, and the server has no TLS: one attempt, not a second without TLS.
        assert!(!e.contains("without TLS"), "{e}");
        let e = ReplicationConn::connect(&login("fd_plain", "sekrit-plain-2"))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("REPLICATION") && !e.contains("sekrit"), "{e}");
        // The local server has no TLS: require refuses, prefer goes on without.
        let e = ReplicationConn::connect(
            &PgUrl::parse(&format!("{}?sslmode=require", url.secret_url())).unwrap(),
        )
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("does not accept TLS"), "{e}");
        ReplicationConn::connect(
            &PgUrl::parse(&format!("{}?sslmode=prefer", url.secret_url())).unwrap(),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_private_cluster_is_reached_on_its_socket_with_scram() {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().to_path_buf();
        let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&path, &SETTINGS))
            .await
            .unwrap()
            .unwrap();
        let url = cluster.url("postgres");
        assert!(url.password().is_some());
        let mut conn = ReplicationConn::connect(&url).await.unwrap();
        conn.identify_system().await.unwrap();
        let wrong = url.with_login("postgres", "not-the-sekrit");
        let e = ReplicationConn::connect(&wrong)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("28P01") && !e.contains("not-the-sekrit"), "{e}");
    }

    fn openssl(dir: &std::path::Path, args: &[&str]) {
        let o = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("the openssl command (install openssl)");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    #[tokio::test]
    async fn tls_follows_sslmode() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let parent = tempfile::tempdir().unwrap();
        let cluster = start(&parent).await;
        let certs = cluster.dir().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=fd test ca",
        ]);
        openssl(&certs, &ca);
        let mut req = vec!["req", "-new"];
        req.extend(ec);
        req.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&certs, &req);
        std::fs::write(certs.join("server.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        openssl(
            &certs,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        // The server (postgres when we are root) must own its key, 0600.
        let owner = std::fs::metadata(cluster.dir()).unwrap();
        for f in ["", "server.key", "server.crt"] {
            let p = certs.join(f);
            std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid())).unwrap();
        }
        std::fs::set_permissions(
            certs.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let client = cluster.url("postgres").connect().await.unwrap();
        // One statement at a time: several would be one transaction, which ALTER SYSTEM refuses.
        for sql in [
            format!(
                "ALTER SYSTEM SET ssl_cert_file = '{}/server.crt'",
                certs.display()
            ),
            format!(
                "ALTER SYSTEM SET ssl_key_file = '{}/server.key'",
                certs.display()
            ),
            "ALTER SYSTEM SET ssl = on".into(),
            "SELECT pg_reload_conf()".into(),
        ] {
            client.batch_execute(&sql).await.unwrap();
        }
        let port = cluster.port();
        let ca = certs.join("ca.crt");
        let url = |host: &str, q: &str| {
            PgUrl::parse(&format!("postgres://postgres@{host}:{port}/postgres?{q}")).unwrap()
        };
        let mut up = None;
        for _ in 0..200 {
            if let Ok(c) = ReplicationConn::connect(&url("127.0.0.1", "sslmode=require")).await {
                up = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut conn = up.expect("TLS after the reload");
        conn.identify_system().await.unwrap();
        let on_tls: bool = client
            .query_one(
                "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.backend_type = 'walsender'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(on_tls);
        let root = format!("sslrootcert={}", ca.display());
        let mut full =
            ReplicationConn::connect(&url("localhost", &format!("sslmode=verify-full&{root}")))
                .await
                .unwrap();
        full.identify_system().await.unwrap();
        ReplicationConn::connect(&url("127.0.0.1", &format!("sslmode=verify-ca&{root}")))
            .await
            .unwrap();
        let e = ReplicationConn::connect(&url("127.0.0.1", &format!("sslmode=verify-full&{root}")))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("TLS handshake"), "{e}");
        // Another CA: verify-ca refuses the chain.
        let other = certs.join("other");
        std::fs::create_dir(&other).unwrap();
        let mut ca2 = vec!["req", "-x509"];
        ca2.extend(ec);
        ca2.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=other",
        ]);
        openssl(&other, &ca2);
        let e = ReplicationConn::connect(&url(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={}/ca.crt", other.display()),
        ))
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("TLS handshake"), "{e}");
    }
}
