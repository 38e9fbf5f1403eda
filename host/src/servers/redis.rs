//! Redis as a source: URLs, a small RESP client, `INFO`, and the RDB
//! snapshot fetched over the replication protocol (what `redis-cli --rdb`
//! does): the server streams its snapshot to us as to a new replica, so no
//! access to its disk is needed.
//!
//! Invariants: a password goes into `AUTH` only, never into a message;
//! memory is bounded by one read buffer whatever the snapshot's size; a
//! snapshot is complete only when its announced length (or end mark) has
//! arrived.

use super::ServerError;
use crate::archive::manifest::KeyCount;
use crate::archive::ObjectWriter;
use crate::telemetry::progress::Progress;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server sends a newline every second while it prepares the snapshot;
/// silence this long means it is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const PIECE: usize = 256 << 10;

/// `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS,
/// checked against the system's roots or the PEM file given as `?ca=PATH`,
/// or `redis+unix:///path/to/socket?pass=PASSWORD` (the redis crate's form;
/// a drill's private redis-server).
#[derive(Clone)]
pub struct RedisUrl {
    url: url::Url,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl RedisUrl {
    pub fn parse(s: &str) -> Result<RedisUrl, String> {
        let shown = crate::telemetry::redact::redact_url(s);
        let url = url::Url::parse(s).map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
        if url.scheme() == "redis+unix" {
            if !url.path().starts_with('/') || url.path().len() < 2 {
                return Err(format!("{shown:?} names no socket path"));
            }
            return Ok(RedisUrl { url });
        }
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(format!(
                "{shown:?}: expected redis:// or rediss://, not {}://",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{shown:?} names no host"));
        }
        Ok(RedisUrl { url })
    }

    pub fn is_redis(s: &str) -> bool {
        s.starts_with("redis://") || s.starts_with("rediss://")
    }

    /// `redis-host-port`: the default name backups of this server are filed under.
    pub fn server(&self) -> String {
        let (host, port) = self.addr();
        format!("redis-{host}-{port}")
    }

    pub fn redacted(&self) -> String {
        if self.is_unix() {
            let mut url = self.url.clone();
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "pass" {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.set_query(None);
            if !pairs.is_empty() {
                url.query_pairs_mut().extend_pairs(pairs);
            }
            return url.to_string();
        }
        crate::telemetry::redact::redact_url(self.url.as_str())
    }

    fn is_unix(&self) -> bool {
        self.url.scheme() == "redis+unix"
    }

    /// A `redis+unix` URL's socket path and `pass`/`user` parameters.
    fn unix_parts(&self) -> (String, Option<String>, Option<String>) {
        let param = |name: &str| {
            self.url
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .filter(|v| !v.is_empty())
        };
        (
            percent_decode(self.url.path()),
            param("pass"),
            param("user"),
        )
    }

    /// The URL's password, decoded as a URL's userinfo is (`+` stays `+`).
    fn password(&self) -> Option<String> {
        self.url
            .password()
            .map(percent_decode)
            .filter(|p| !p.is_empty())
    }

    /// The full URL, password included: only for clients that need it.
    pub fn secret_url(&self) -> &str {
        self.url.as_str()
    }

    fn addr(&self) -> (String, u16) {
        (
            self.url
                .host_str()
                .unwrap_or("127.0.0.1")
                .trim_matches(['[', ']'])
                .to_string(),
            self.url.port().unwrap_or(6379),
        )
    }

    pub async fn connect(&self) -> Result<Conn, ServerError> {
        let (host, port) = self.addr();
        let err = |message: String| ServerError::Connect {
            url: self.redacted(),
            message,
        };
        if self.is_unix() {
            let (path, password, user) = self.unix_parts();
            let stream =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(&path))
                    .await
                    .map_err(|_| err(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
                    .map_err(|e| err(e.to_string()))?;
            let mut conn = Conn {
                io: BufReader::with_capacity(PIECE, Box::new(stream)),
                shown: self.redacted(),
            };
            if let Some(password) = password {
                conn.auth(user.as_deref().unwrap_or(""), &password)
                    .await
                    .map_err(err)?;
            }
            return Ok(conn);
        }
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| err(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
                .map_err(|e| err(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let io: Box<dyn Io> = if self.url.scheme() == "rediss" {
            Box::new(self.tls(stream, &host).await.map_err(err)?)
        } else {
            Box::new(stream)
        };
        let mut conn = Conn {
            io: BufReader::with_capacity(PIECE, io),
            shown: self.redacted(),
        };
        if let Some(password) = self.password() {
            let user = percent_decode(self.url.username());
            conn.auth(&user, &password).await.map_err(err)?;
        }
        Ok(conn)
    }
}

impl Conn {
    async fn auth(&mut self, user: &str, password: &str) -> Result<(), String> {
        let reply = if user.is_empty() {
            self.command(&[b"AUTH", password.as_bytes()]).await
        } else {
            self.command(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                .await
        }
        .map_err(|e| e.to_string())?;
        if let Reply::Error(e) = reply {
            // The server's words (WRONGPASS ...) never contain the password.
            return Err(format!("authentication refused: {e}"));
        }
        Ok(())
    }
}

impl RedisUrl {
    async fn tls(
        &self,
        stream: TcpStream,
        host: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        use tokio_rustls::rustls::{self, pki_types::pem::PemObject, pki_types::CertificateDer};
        let mut roots = rustls::RootCertStore::empty();
        match self.url.query_pairs().find(|(k, _)| k == "ca") {
            Some((_, path)) => {
                let certs = CertificateDer::pem_file_iter(path.as_ref())
                    .map_err(|e| format!("ca={path}: {e}"))?;
                for cert in certs {
                    roots
                        .add(cert.map_err(|e| format!("ca={path}: {e}"))?)
                        .map_err(|e| format!("ca={path}: {e}"))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host}: {e}"))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))
    }
}

/// A client of the `redis` crate, for the coordination (and keyvalue) Redis. `rediss://` is TLS
/// with the server's certificate always checked: against the system roots
/// (or the PEM bundle named by `SSL_CERT_FILE`), or only against the PEM CA
/// file named by a `?ca=/path/ca.pem` parameter, as for Redis sources. The
/// redis crate's `#insecure` fragment is refused: a MITM could then answer
/// "not revoked" or hand out leases.
pub fn client(url: &str) -> Result<::redis::Client, ::redis::RedisError> {
    let invalid = |detail: String| {
        ::redis::RedisError::from((
            ::redis::ErrorKind::InvalidClientConfig,
            "invalid Redis URL",
            detail,
        ))
    };
    let mut parsed = url::Url::parse(url)
        .map_err(|e| invalid(format!("{e} (expected redis:// or rediss://)")))?;
    if parsed.fragment().is_some() {
        return Err(invalid(
            "a #fragment (such as #insecure) is not accepted: certificates are always checked; name a private CA with ?ca=/path/ca.pem".into(),
        ));
    }
    let ca = parsed
        .query_pairs()
        .find(|(k, _)| k == "ca")
        .map(|(_, v)| v.into_owned());
    let Some(ca) = ca else {
        return ::redis::Client::open(url);
    };
    if parsed.scheme() != "rediss" {
        return Err(invalid(format!("ca={ca} is only for TLS: use rediss://")));
    }
    let rest: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != "ca")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parsed.set_query(None);
    if !rest.is_empty() {
        parsed.query_pairs_mut().extend_pairs(rest);
    }
    let pem = std::fs::read(&ca).map_err(|e| invalid(format!("ca={ca}: {e}")))?;
    ::redis::Client::build_with_tls(
        parsed.as_str(),
        ::redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        },
    )
}

/// A plain or TLS connection.
trait Io: AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync> Io for T {}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// One connection, speaking RESP2.
pub struct Conn {
    io: BufReader<Box<dyn Io>>,
    shown: String,
}

impl Conn {
    fn io_error(&self, what: &str, e: impl std::fmt::Display) -> ServerError {
        ServerError::Tool {
            tool: format!("redis {}", self.shown),
            message: format!("{what}: {e}"),
        }
    }

    pub async fn command(&mut self, args: &[&[u8]]) -> Result<Reply, ServerError> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        let name = String::from_utf8_lossy(args.first().copied().unwrap_or(b"")).to_string();
        self.io
            .get_mut()
            .write_all(&out)
            .await
            .map_err(|e| self.io_error(&name, e))?;
        match tokio::time::timeout(IDLE_TIMEOUT, read_reply(&mut self.io)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.io_error(&name, e)),
            Err(_) => Err(self.io_error(&name, "no reply in time")),
        }
    }

    /// `INFO section` as text.
    pub async fn info(&mut self, section: &str) -> Result<String, ServerError> {
        match self.command(&[b"INFO", section.as_bytes()]).await? {
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Reply::Error(e) => Err(self.io_error("INFO", e)),
            other => Err(self.io_error("INFO", format!("unexpected reply {other:?}"))),
        }
    }

    /// Asks for the snapshot as a replica would and streams it into `out`;
    /// returns its size. The connection is spent afterwards (the server goes
    /// on with the replication stream).
    pub async fn fetch_rdb(
        mut self,
        out: &mut ObjectWriter,
        progress: &Progress,
    ) -> Result<u64, ServerError> {
        // Only the snapshot, no replication stream after it (Redis 7+;
        // older servers answer an error and stream anyway).
        let _ = self.command(&[b"REPLCONF", b"rdb-only", b"1"]).await?;
        // Diskless: the server may stream without writing the RDB to its disk.
        let _ = self.command(&[b"REPLCONF", b"capa", b"eof"]).await?;
        self.io
            .get_mut()
            .write_all(b"*1\r\n$4\r\nSYNC\r\n")
            .await
            .map_err(|e| self.io_error("SYNC", e))?;
        let header = loop {
            let mut line = Vec::new();
            let n = tokio::time::timeout(IDLE_TIMEOUT, self.io.read_until(b'\n', &mut line))
                .await
                .map_err(|_| self.io_error("SYNC", "the server sent nothing for 60s"))?
                .map_err(|e| self.io_error("SYNC", e))?;
            if n == 0 {
                return Err(self.io_error("SYNC", "the server closed the connection"));
            }
            // Bare newlines are keep-alives while the server prepares the snapshot.
            if line == b"\n" || line == b"\r\n" {
                continue;
            }
            break String::from_utf8_lossy(&line).trim_end().to_string();
        };
        if let Some(e) = header.strip_prefix('-') {
            return Err(self.io_error("SYNC", format!("refused: {e} (the user needs the replication permission, e.g. ACL +sync +psync +replconf)")));
        }
        let Some(size) = header.strip_prefix('$') else {
            return Err(self.io_error("SYNC", format!("unexpected reply {header:?}")));
        };
        let mut total = 0u64;
        let mut buf = vec![0u8; PIECE];
        if let Some(mark) = size.strip_prefix("EOF:") {
            // Diskless: the snapshot ends with the 40-byte mark the header announced.
            let mark = mark.as_bytes().to_vec();
            let mut pending: Vec<u8> = Vec::new();
            loop {
                let n = self.read_some(&mut buf).await?;
                pending.extend_from_slice(&buf[..n]);
                if pending.ends_with(&mark) {
                    pending.truncate(pending.len() - mark.len());
                    total += pending.len() as u64;
                    self.put(out, progress, &pending, total).await?;
                    return Ok(total);
                }
                // Keep back what could be the start of the mark.
                if pending.len() > mark.len() {
                    let keep = pending.split_off(pending.len() - mark.len());
                    total += pending.len() as u64;
                    self.put(out, progress, &pending, total).await?;
                    pending = keep;
                }
            }
        }
        let size: u64 = size
            .parse()
            .map_err(|_| self.io_error("SYNC", format!("unexpected length {size:?}")))?;
        while total < size {
            let want = (size - total).min(PIECE as u64) as usize;
            let n = self.read_some(&mut buf[..want]).await?;
            total += n as u64;
            self.put(out, progress, &buf[..n], total).await?;
        }
        Ok(total)
    }

    /// Hands a piece of the snapshot on; `total` counts it already.
    async fn put(
        &self,
        out: &mut ObjectWriter,
        progress: &Progress,
        piece: &[u8],
        total: u64,
    ) -> Result<(), ServerError> {
        let start = total - piece.len() as u64;
        // Every RDB starts with "REDIS" and its version.
        if start < 5 && !piece.is_empty() {
            let magic = &b"REDIS"[start as usize..(start as usize + piece.len()).min(5)];
            if !piece.starts_with(magic) {
                return Err(self.io_error("SYNC", "the server did not send an RDB snapshot"));
            }
        }
        progress.add_bytes(piece.len() as u64);
        out.write(piece).await?;
        Ok(())
    }

    async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, ServerError> {
        let n = tokio::time::timeout(IDLE_TIMEOUT, self.io.read(buf))
            .await
            .map_err(|_| self.io_error("SYNC", "the snapshot stalled for 60s"))?
            .map_err(|e| self.io_error("SYNC", e))?;
        if n == 0 {
            return Err(self.io_error(
                "SYNC",
                "the connection closed before the snapshot was complete",
            ));
        }
        Ok(n)
    }
}

async fn read_reply<R: AsyncRead + Unpin>(io: &mut BufReader<R>) -> std::io::Result<Reply> {
    let mut line = Vec::new();
    if io.read_until(b'\n', &mut line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let text = String::from_utf8_lossy(&line).trim_end().to_string();
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not RESP: {text:?}"),
        )
    };
    let (kind, rest) = text.split_at(1.min(text.len()));
    Ok(match kind {
        "+" => Reply::Status(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut data = vec![0u8; n as usize + 2];
                io.read_exact(&mut data).await?;
                data.truncate(n as usize);
                Reply::Bulk(Some(data))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(Box::pin(read_reply(io)).await?);
            }
            Reply::Array(items)
        }
        _ => return Err(bad()),
    })
}

/// `db0:keys=5,expires=1,avg_ttl=0` lines of `INFO keyspace`, by database name.
pub fn keyspace(info: &str) -> BTreeMap<String, KeyCount> {
    let mut out = BTreeMap::new();
    for line in info.lines() {
        let Some((db, fields)) = line.trim().split_once(':') else {
            continue;
        };
        if !db.starts_with("db") {
            continue;
        }
        let mut count = KeyCount::default();
        for f in fields.split(',') {
            match f.split_once('=') {
                Some(("keys", v)) => count.keys = v.parse().unwrap_or(0),
                Some(("expires", v)) => count.expires = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        out.insert(db.to_string(), count);
    }
    out
}

/// A field of an `INFO` text, e.g. `redis_version`.
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plus_in_a_password_is_a_plus() {
        // Userinfo is not a form: `+` is itself, `%2B` too, `%20` a space.
        let u = RedisUrl::parse("redis://:a+b%2Bc%20d@127.0.0.1:6380/0").unwrap();
        assert_eq!(u.password().as_deref(), Some("a+b+c d"));
        let unix = RedisUrl::parse("redis+unix:///run/redis%20x/redis.sock?pass=p+q").unwrap();
        assert_eq!(unix.unix_parts().0, "/run/redis x/redis.sock");
    }

    #[test]
    fn keyspace_and_fields_parse() {
        let info =
            "# Keyspace\r\ndb0:keys=5,expires=1,avg_ttl=100\r\ndb3:keys=2,expires=0,avg_ttl=0\r\n";
        let k = keyspace(info);
        assert_eq!(
            k["db0"],
            KeyCount {
                keys: 5,
                expires: 1
            }
        );
        assert_eq!(k["db3"].keys, 2);
        assert_eq!(
            info_field("# Server\r\nredis_version:7.0.15\r\n", "redis_version"),
            Some("7.0.15")
        );
    }

    #[test]
    fn urls_hide_their_password() {
        let u = RedisUrl::parse("redis://app:s3cret@cache:6380/2").unwrap();
        assert_eq!(u.redacted(), "redis://app:***@cache:6380/2");
        assert_eq!(format!("{u:?}"), "redis://app:***@cache:6380/2");
        assert_eq!(u.addr(), ("cache".to_string(), 6380));
        let e = RedisUrl::parse("http://:s3cret@cache/").unwrap_err();
        assert!(e.contains("redis://") && !e.contains("s3cret"), "{e}");
        assert!(RedisUrl::parse("rediss://cache/?ca=/etc/ca.pem").is_ok());
        let u = RedisUrl::parse("redis+unix:///run/fd/redis.sock?pass=s3cret").unwrap();
        assert_eq!(u.redacted(), "redis+unix:///run/fd/redis.sock?pass=***");
        assert_eq!(
            u.unix_parts(),
            (
                "/run/fd/redis.sock".to_string(),
                Some("s3cret".to_string()),
                None
            )
        );
    }

    #[tokio::test]
    async fn replies_parse() {
        let data: &[u8] = b"*3\r\n+OK\r\n:42\r\n$3\r\nabc\r\n";
        let mut r = BufReader::new(data);
        assert_eq!(
            read_reply(&mut r).await.unwrap(),
            Reply::Array(vec![
                Reply::Status("OK".into()),
                Reply::Int(42),
                Reply::Bulk(Some(b"abc".to_vec()))
            ])
        );
    }
}
