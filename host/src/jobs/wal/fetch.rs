//! WAL out of the archive for a recovering server: what its
//! `restore_command` asks for (`%f`), verified before a byte reaches
//! PostgreSQL, written to `%p`.
//!
//! Two ways in: `firedrill wal fetch %f %p` with the store from the
//! configuration (operators' own restore_command), or, for firedrill's own
//! restores and drills, `firedrill wal fetch --via <socket> %f %p`: the
//! restoring process (which holds the store's credentials and the age
//! identities) answers over a Unix socket in the cluster's private
//! directory, so the server's environment carries no secret.
//!
//! Invariants: a segment is handed over only when its record's signature
//! (when keys are trusted), its size and sha256, and its first page (system
//! id, position, segment size) check out; anything else is a refusal that
//! stops recovery (exit 126), never "not found" (which recovery takes for
//! the end of the WAL, silently stopping early).

use crate::archive::wal::{self, Lsn, Segment};
use crate::archive::{ArchiveError, Store};
use crate::jobs::JobError;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The biggest history file accepted (they hold a line per timeline switch).
const HISTORY_MAX: u64 = 16 << 20;
/// The biggest segment size PostgreSQL allows.
const SEGMENT_MAX: u64 = 1 << 30;

/// What recovery asked for: a segment, or a timeline's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    Segment { name: String, timeline: u32 },
    History { name: String },
}

impl Wanted {
    /// `%f` as PostgreSQL passes it; anything else is refused (a name is
    /// never a path).
    pub fn parse(name: &str) -> Option<Wanted> {
        if let Some(tli) = wal::parse_history_name(name) {
            let _ = tli;
            return Some(Wanted::History { name: name.into() });
        }
        // The segment size is unknown here: the smallest one allows the
        // most segments per xlogid, so every valid name parses with it.
        let seg = Segment::parse(name, 1 << 20)?;
        Some(Wanted::Segment {
            name: name.into(),
            timeline: seg.timeline,
        })
    }
}

/// The verified bytes of `name` (zero-padded to the segment size when only
/// the partial segment a stopped streamer left exists), or None when the
/// archive does not have it. `system_id`: the cluster being recovered.
pub async fn fetch(
    store: &Store,
    source: &str,
    name: &str,
    system_id: Option<&str>,
) -> Result<Option<Vec<u8>>, JobError> {
    let wanted = Wanted::parse(name).ok_or_else(|| {
        JobError::Config(format!(
            "{name:?} is neither a WAL segment nor a history file name"
        ))
    })?;
    match wanted {
        Wanted::History { name } => {
            let object = format!("{}{name}", wal::wal_dir(source));
            match wal::get(store, &object, HISTORY_MAX).await {
                Ok((record, data)) => {
                    // `wal push` cannot tell a history file's system (the
                    // file does not say); the streamer records it.
                    let system = system_id.filter(|_| !record.system_id.is_empty());
                    check_record(&record, source, &name, system)?;
                    Ok(Some(data))
                }
                Err(ArchiveError::Missing { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
        Wanted::Segment { name, timeline } => {
            let dir = wal::timeline_dir(source, timeline);
            let full = format!("{dir}{name}");
            let (record, mut data) = match wal::get(store, &full, SEGMENT_MAX).await {
                Ok(found) => found,
                Err(ArchiveError::Missing { .. }) => match get_partial(store, &full).await? {
                    Some(found) => {
                        refuse_partial_before_later_wal(store, source, &found.0, &full).await?;
                        found
                    }
                    // The streamer may have just stored the whole segment
                    // (and deleted its partial copy): look once more.
                    None => match wal::get(store, &full, SEGMENT_MAX).await {
                        Ok(found) => found,
                        Err(ArchiveError::Missing { .. }) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    },
                },
                Err(e) => return Err(e.into()),
            };
            check_record(&record, source, &name, system_id)?;
            let size =
                wal::check_segment_size(record.segment_size).map_err(|e| refused(&full, e))?;
            let seg = Segment::parse(&name, size)
                .ok_or_else(|| refused(&full, format!("{name} is not a segment of size {size}")))?;
            let expected_len = if record.partial {
                record.end.0.saturating_sub(seg.start(size).0)
            } else {
                size
            };
            if record.start != seg.start(size) || data.len() as u64 != expected_len {
                return Err(refused(
                    &full,
                    format!(
                        "holds {} bytes from {}, but segment {name} starts at {} and its record says {expected_len} bytes",
                        data.len(),
                        record.start,
                        seg.start(size)
                    ),
                ));
            }
            wal::check_segment_header(&data, seg.start(size), &record.system_id, size)
                .map_err(|e| refused(&full, e))?;
            // Recovery reads a partial segment up to its last valid record;
            // the zeros after it end the WAL there, as in a crashed server's.
            data.resize(size as usize, 0);
            Ok(Some(data))
        }
    }
}

/// A partial copy ends the WAL where its bytes end: handed over only when
/// the archive has nothing after it on its timeline. If it does, the whole
/// segment is missing from the middle of the archive, and replaying the
/// partial copy would end recovery early, silently.
async fn refuse_partial_before_later_wal(
    store: &Store,
    source: &str,
    record: &wal::SegmentRecord,
    full: &str,
) -> Result<(), JobError> {
    let size = wal::check_segment_size(record.segment_size).map_err(|e| refused(full, e))?;
    let seg = Segment::parse(&record.segment, size)
        .ok_or_else(|| refused(full, format!("{} is not a segment name", record.segment)))?;
    let next = seg.next();
    for partial in [false, true] {
        let object = wal::segment_path(source, &next, size, partial);
        match wal::read_record(store, &object).await {
            Err(ArchiveError::Missing { .. }) => {}
            _ => {
                return Err(refused(
                    full,
                    format!(
                        "only a partial copy of {} is archived, but later WAL ({}) is: the whole segment is missing; run `firedrill wal verify`",
                        record.segment,
                        next.file_name(size)
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// The partial copy of a segment, if any. A streamer rewrites it while
/// WAL arrives (object first, then record), so a copy read between the two
/// is read again rather than refused.
async fn get_partial(
    store: &Store,
    full: &str,
) -> Result<Option<(wal::SegmentRecord, Vec<u8>)>, JobError> {
    let object = format!("{full}.partial");
    let mut tries = 0;
    loop {
        match wal::get(store, &object, SEGMENT_MAX).await {
            Ok(found) => return Ok(Some(found)),
            Err(ArchiveError::Missing { .. }) => return Ok(None),
            Err(ArchiveError::Corrupt { .. }) if tries < 3 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn refused(object: &str, reason: String) -> JobError {
    ArchiveError::Corrupt {
        object: object.into(),
        reason,
    }
    .into()
}

fn check_record(
    record: &wal::SegmentRecord,
    source: &str,
    name: &str,
    system_id: Option<&str>,
) -> Result<(), JobError> {
    if record.source != source || record.segment != name {
        return Err(refused(
            name,
            format!(
                "its record names {} of source {}: a record copied from elsewhere",
                record.segment, record.source
            ),
        ));
    }
    if let Some(id) = system_id {
        if record.system_id != id {
            return Err(refused(
                name,
                format!(
                    "it belongs to database system {}, and the cluster being recovered is {id}",
                    record.system_id
                ),
            ));
        }
    }
    Ok(())
}

/// Writes `data` to `dest` whole or not at all (recovery must never read a
/// half-written segment): a temporary file beside it, synced, renamed.
pub fn write_dest(dest: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// How `firedrill wal fetch --via` ends, as restore_command's exit status:
/// PostgreSQL takes 1 for "not in the archive" and a status above 125 for
/// an error that must stop recovery.
pub const EXIT_MISSING: i32 = 1;
pub const EXIT_REFUSED: i32 = 126;

/// Answers `firedrill wal fetch --via` on a Unix socket until dropped:
/// one request per connection (`<name>\n`), answered `ok <len>\n<bytes>`,
/// `missing\n` or `error <message>\n`. The socket lives in a private
/// directory; `system_id` is the cluster being recovered.
pub struct FetchServer {
    pub socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
    pub served: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The private directory holding the socket, when this server made it.
    _dir: Option<tempfile::TempDir>,
}

impl Drop for FetchServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl FetchServer {
    pub fn start(
        socket: PathBuf,
        store: Store,
        source: String,
        system_id: String,
        owner: Option<(u32, u32)>,
    ) -> Result<FetchServer, JobError> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).map_err(|e| {
            JobError::Internal(format!("cannot listen on {}: {e}", socket.display()))
        })?;
        if let Some((uid, gid)) = owner {
            // The server's restore_command runs as the server's user.
            let _ = std::os::unix::fs::chown(&socket, Some(uid), Some(gid));
        }
        let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = served.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (store, source, system_id) = (store.clone(), source.clone(), system_id.clone());
                let counter = counter.clone();
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut line = String::new();
                    let mut r = BufReader::new(r).take(256);
                    if r.read_line(&mut line).await.is_err() {
                        return;
                    }
                    let name = line.trim_end();
                    let answer = fetch(&store, &source, name, Some(&system_id)).await;
                    let _ = match answer {
                        Ok(Some(data)) => {
                            counter
                                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                            let head = format!("ok {}\n", data.len());
                            match w.write_all(head.as_bytes()).await {
                                Ok(()) => w.write_all(&data).await,
                                Err(e) => Err(e),
                            }
                        }
                        Ok(None) => w.write_all(b"missing\n").await,
                        Err(e) => {
                            tracing::error!(segment = name, error = %e, "WAL refused to the recovering server");
                            let msg = e.to_string().replace('\n', " ");
                            w.write_all(format!("error {msg}\n").as_bytes()).await
                        }
                    };
                });
            }
        });
        Ok(FetchServer {
            socket,
            task,
            served,
            _dir: None,
        })
    }

    /// A server for one restore of `source`'s backup of database system
    /// `system_id`, on a socket in a new private directory (readable by the
    /// server's user only), and the `restore_command` that asks it through
    /// `exe` (the firedrill binary).
    pub fn for_restore(
        store: &Store,
        source: &str,
        system_id: &str,
        exe: &Path,
    ) -> Result<(FetchServer, String), JobError> {
        let dir = tempfile::Builder::new()
            .prefix("firedrill-wal-")
            .tempdir()
            .map_err(|e| JobError::Internal(format!("cannot make a private directory: {e}")))?;
        let owner = crate::servers::local_pg::server_user()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
                JobError::Internal(format!(
                    "cannot hand {} to the server's user: {e}",
                    dir.path().display()
                ))
            })?;
        }
        let socket = dir.path().join("wal.sock");
        let command = format!(
            "{} wal fetch --via {} %f %p",
            shell_quote(&exe.display().to_string())?,
            shell_quote(&socket.display().to_string())?
        );
        let mut server = FetchServer::start(
            socket,
            store.clone(),
            source.to_string(),
            system_id.to_string(),
            owner,
        )?;
        server._dir = Some(dir);
        Ok((server, command))
    }
}

/// A word for `/bin/sh`, single-quoted (restore_command goes through the
/// shell, and PostgreSQL expands `%` in it); a path with a quote, a `%`
/// or a newline is refused rather than escaped.
fn shell_quote(s: &str) -> Result<String, JobError> {
    if s.contains(['\'', '\n', '\r', '%']) {
        return Err(JobError::Config(format!(
            "{s:?}: a path with a quote, a percent sign or a newline cannot go into restore_command"
        )));
    }
    Ok(format!("'{s}'"))
}

/// The client side of [`FetchServer`], for `firedrill wal fetch --via`:
/// the exit status restore_command must return.
pub fn fetch_via(socket: &Path, name: &str, dest: &Path) -> (i32, String) {
    use std::io::{BufRead, Read};
    if Wanted::parse(name).is_none() {
        return (EXIT_REFUSED, format!("{name:?} is not a WAL file name"));
    }
    let conn = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(c) => c,
        Err(e) => {
            return (
                EXIT_REFUSED,
                format!(
                    "cannot reach the restoring firedrill at {}: {e}",
                    socket.display()
                ),
            )
        }
    };
    let mut w = &conn;
    if let Err(e) = w.write_all(format!("{name}\n").as_bytes()) {
        return (EXIT_REFUSED, e.to_string());
    }
    let mut r = std::io::BufReader::new(&conn);
    let mut head = String::new();
    if let Err(e) = r.read_line(&mut head) {
        return (EXIT_REFUSED, e.to_string());
    }
    let head = head.trim_end();
    if head == "missing" {
        return (EXIT_MISSING, format!("{name}: not in the archive"));
    }
    if let Some(msg) = head.strip_prefix("error ") {
        return (EXIT_REFUSED, format!("{name}: {msg}"));
    }
    let Some(len) = head
        .strip_prefix("ok ")
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n <= SEGMENT_MAX)
    else {
        return (EXIT_REFUSED, format!("{name}: unexpected answer {head:?}"));
    };
    let mut data = Vec::with_capacity(len as usize);
    if let Err(e) = r.take(len).read_to_end(&mut data) {
        return (EXIT_REFUSED, e.to_string());
    }
    if data.len() as u64 != len {
        return (EXIT_REFUSED, format!("{name}: the answer was cut short"));
    }
    match write_dest(dest, &data) {
        Ok(()) => (0, format!("{name}: restored ({len} bytes)")),
        Err(e) => (EXIT_REFUSED, format!("{}: {e}", dest.display())),
    }
}

/// The start of the segment a position lies in, named: for messages.
pub fn segment_of(timeline: u32, lsn: Lsn, size: u64) -> String {
    Segment::of(timeline, lsn, size).file_name(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wal_names_are_wanted() {
        assert_eq!(
            Wanted::parse("000000010000000000000003"),
            Some(Wanted::Segment {
                name: "000000010000000000000003".into(),
                timeline: 1
            })
        );
        assert_eq!(
            Wanted::parse("00000002.history"),
            Some(Wanted::History {
                name: "00000002.history".into()
            })
        );
        for bad in [
            "../../../etc/passwd",
            "000000010000000000000003.partial",
            "00000001000000000000003",
            "RECOVERYXLOG",
            "",
        ] {
            assert_eq!(Wanted::parse(bad), None, "{bad}");
        }
    }
}
