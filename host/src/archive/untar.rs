//! A strict, streaming tar extractor for untrusted archives (physical base
//! backups): the bytes come from the store as the object reader hands them
//! over, and go to disk as they arrive, in one blocking thread.
//!
//! Invariants: only regular files and directories are created, below the
//! target and nowhere else: a path that is absolute or climbs (`..`) is
//! refused, as is every link, device and fifo (a `pg_tblspc/<oid>` symlink
//! is reported to the caller, never created: the caller points it at where
//! it unpacked the tablespace). Nothing existing in the target is followed
//! or replaced: directories are opened one component at a time with
//! O_NOFOLLOW, files are created with O_EXCL|O_NOFOLLOW. Modes are ours
//! (0700 directories, 0600 files), never the archive's. The stream is
//! bounded in bytes and entries. Errors name the backup object and the entry.
//!
//! PostgreSQL writes plain ustar headers (names and link targets of at most
//! 99 bytes, no GNU or pax extensions: see its `tarCreateHeader`), so the
//! headers are read raw and extension headers are refused: a long-name
//! entry would otherwise be held in memory whole, whatever its size.

use std::cell::{Cell, RefCell};
use std::ffi::{CString, OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

/// How much one archive may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of tar stream (headers and padding included).
    pub max_bytes: u64,
    /// Entries (files, directories, reported links).
    pub max_entries: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub limits: Limits,
    /// Report `pg_tblspc/<oid>` symlinks instead of refusing them (the base
    /// archive of a cluster with tablespaces).
    pub tablespace_links: bool,
}

/// A `pg_tblspc/<oid>` symlink the archive holds, not created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceLink {
    pub oid: String,
    /// Where it pointed on the source.
    pub target: String,
}

/// What an archive held.
#[derive(Debug, Default, Clone)]
pub struct Extracted {
    pub files: u64,
    pub dirs: u64,
    /// Bytes of tar stream read.
    pub stream_bytes: u64,
    /// Bytes of file content written.
    pub file_bytes: u64,
    pub tablespace_links: Vec<TablespaceLink>,
}

#[derive(Debug, thiserror::Error)]
pub enum UntarError {
    /// The archive holds what is refused, or is not a well-formed tar
    /// stream: a tampered or damaged backup.
    #[error("{object}: {}{reason}", entry.as_ref().map(|e| format!("tar entry {e:?}: ")).unwrap_or_default())]
    Refused {
        object: String,
        entry: Option<String>,
        reason: String,
    },
    /// Writing to the target failed (space, permissions): this machine's
    /// problem, not the backup's.
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error("tar extractor: {0}")]
    Internal(String),
}

/// One piece of a tar stream, with the backup object it came from.
type Piece = (Arc<str>, Vec<u8>);

/// Pieces in flight between the async reader and the extracting thread.
const QUEUE: usize = 16;

/// An extraction under way: feed it the stream's pieces in order, then finish.
pub struct Extractor {
    tx: Option<tokio::sync::mpsc::Sender<Piece>>,
    task: Option<tokio::task::JoinHandle<Result<Extracted, UntarError>>>,
}

impl Extractor {
    /// Starts extracting into `dest`, an existing directory (not a symlink).
    pub fn start(dest: &Path, opts: Options) -> Result<Extractor, UntarError> {
        let root = open_root(dest).map_err(|e| UntarError::Write {
            path: dest.display().to_string(),
            message: e.to_string(),
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(QUEUE);
        let dest = dest.to_path_buf();
        let task = tokio::task::spawn_blocking(move || extract(rx, root, &dest, opts));
        Ok(Extractor {
            tx: Some(tx),
            task: Some(task),
        })
    }

    /// Hands over the next piece of the stream, read from backup object `object`.
    pub async fn feed(&mut self, object: &Arc<str>, piece: Vec<u8>) -> Result<(), UntarError> {
        let Some(tx) = &self.tx else {
            return Err(UntarError::Internal("fed after it stopped".into()));
        };
        if tx.send((object.clone(), piece)).await.is_ok() {
            return Ok(());
        }
        // The extractor stopped early: its error says why.
        self.tx = None;
        match self.join().await {
            Err(e) => Err(e),
            Ok(_) => Err(UntarError::Internal(
                "the extractor stopped before the stream ended".into(),
            )),
        }
    }

    /// The stream ended: waits for the last entries to be written.
    pub async fn finish(mut self) -> Result<Extracted, UntarError> {
        self.tx = None;
        self.join().await
    }

    async fn join(&mut self) -> Result<Extracted, UntarError> {
        match self.task.take() {
            Some(t) => t
                .await
                .map_err(|e| UntarError::Internal(format!("the extracting thread failed: {e}")))?,
            None => Err(UntarError::Internal("already finished".into())),
        }
    }
}

/// The stream as a blocking `Read`, counting and bounding its bytes and
/// remembering which object the bytes being read came from.
struct Feed {
    rx: tokio::sync::mpsc::Receiver<Piece>,
    piece: Vec<u8>,
    at: usize,
    object: Rc<RefCell<Arc<str>>>,
    read: Rc<Cell<u64>>,
    max: u64,
    over: Rc<Cell<bool>>,
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.blocking_recv() {
                Some((object, piece)) => {
                    *self.object.borrow_mut() = object;
                    self.piece = piece;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        if self.read.get() + n as u64 > self.max {
            self.over.set(true);
            return Err(std::io::Error::other("over the limit"));
        }
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

fn extract(
    rx: tokio::sync::mpsc::Receiver<Piece>,
    root: OwnedFd,
    dest: &Path,
    opts: Options,
) -> Result<Extracted, UntarError> {
    let object: Rc<RefCell<Arc<str>>> = Rc::new(RefCell::new(Arc::from("")));
    let read = Rc::new(Cell::new(0u64));
    let over = Rc::new(Cell::new(false));
    let feed = Feed {
        rx,
        piece: Vec::new(),
        at: 0,
        object: object.clone(),
        read: read.clone(),
        max: opts.limits.max_bytes,
        over: over.clone(),
    };
    let refused = |entry: Option<&str>, reason: String| UntarError::Refused {
        object: object.borrow().to_string(),
        entry: entry.map(str::to_string),
        reason,
    };
    let limit = |entry: Option<&str>| {
        refused(
            entry,
            format!(
                "the tar stream is longer than the {} bytes the manifest records: stopped reading",
                opts.limits.max_bytes
            ),
        )
    };
    let mut archive = tar::Archive::new(feed);
    let mut out = Extracted::default();
    let mut dirs = Dirs {
        root,
        dest: dest.to_path_buf(),
        cached: None,
    };
    let mut buf = vec![0u8; 256 << 10];
    {
        let entries = archive
            .entries()
            .map_err(|e| refused(None, e.to_string()))?;
        let mut entries = entries.raw(true);
        let mut last: Option<String> = None;
        loop {
            let entry = match entries.next() {
                None => break,
                Some(Ok(e)) => e,
                Some(Err(_)) if over.get() => return Err(limit(last.as_deref())),
                Some(Err(e)) => {
                    let after = last
                        .as_ref()
                        .map(|l| format!(" (after entry {l:?})"))
                        .unwrap_or_default();
                    return Err(refused(None, format!("not a valid tar stream{after}: {e}")));
                }
            };
            let mut entry = entry;
            let raw_path = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw_path).into_owned();
            last = Some(name.clone());
            let refuse = |reason: String| refused(Some(&name), reason);
            let count = out.files + out.dirs + out.tablespace_links.len() as u64;
            if count >= opts.limits.max_entries {
                return Err(refuse(format!(
                    "more than {} entries: stopped reading",
                    opts.limits.max_entries
                )));
            }
            let comps = components(&raw_path).map_err(&refuse)?;
            let size = entry.size();
            if read.get().saturating_add(size) > opts.limits.max_bytes {
                return Err(limit(Some(&name)));
            }
            let kind = entry.header().entry_type();
            match kind {
                tar::EntryType::Directory => {
                    dirs.open_dir(&comps, true)
                        .map_err(|e| dirs.error(&comps, e))?;
                    out.dirs += 1;
                }
                tar::EntryType::Regular => {
                    let Some((file_name, parent)) = comps.split_last() else {
                        return Err(refuse("a file without a name".into()));
                    };
                    let parent_fd = dirs
                        .open_dir(parent, true)
                        .map_err(|e| dirs.error(parent, e))?;
                    let mut file =
                        create_file(&parent_fd, file_name).map_err(|e| match e.raw_os_error() {
                            Some(libc::EEXIST) => refuse(
                                "appears twice, or already exists in the target (never replaced)"
                                    .into(),
                            ),
                            Some(libc::ELOOP) => refuse(
                                "a symlink is in its place in the target (never followed)".into(),
                            ),
                            _ => dirs.error(&comps, e),
                        })?;
                    let mut written = 0u64;
                    loop {
                        let n = match entry.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(_) if over.get() => return Err(limit(Some(&name))),
                            Err(e) => return Err(refuse(format!("cannot read its data: {e}"))),
                        };
                        file.write_all(&buf[..n])
                            .map_err(|e| dirs.error(&comps, e))?;
                        written += n as u64;
                    }
                    if written != size {
                        return Err(refuse(format!(
                            "the stream ends inside it ({written} of {size} bytes)"
                        )));
                    }
                    out.files += 1;
                    out.file_bytes += written;
                }
                tar::EntryType::Symlink
                    if opts.tablespace_links
                        && comps.len() == 2
                        && comps[0] == "pg_tblspc"
                        && is_oid(&comps[1]) =>
                {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    out.tablespace_links.push(TablespaceLink {
                        oid: comps[1].to_string_lossy().into_owned(),
                        target,
                    });
                }
                other => {
                    return Err(refuse(format!(
                        "{} entries are refused: a base backup holds only files and directories{}",
                        kind_name(other),
                        if opts.tablespace_links {
                            " (and pg_tblspc/<oid> symlinks)"
                        } else {
                            ""
                        }
                    )))
                }
            }
        }
    }
    // Past the end-of-archive block: only padding may follow, and it is read
    // to the end so every object is read whole (its checksum is checked there).
    let mut feed = archive.into_inner();
    loop {
        let n = match feed.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) if over.get() => return Err(limit(None)),
            Err(e) => return Err(UntarError::Internal(e.to_string())),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(refused(
                None,
                "data after the end of the tar archive (hidden entries?): refused".into(),
            ));
        }
    }
    out.stream_bytes = read.get();
    Ok(out)
}

fn kind_name(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "fifo",
        tar::EntryType::Continuous => "contiguous file",
        tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {
            "GNU long-name (PostgreSQL never writes them)"
        }
        tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => {
            "pax extension (PostgreSQL never writes them)"
        }
        tar::EntryType::GNUSparse => "sparse file",
        _ => "unknown-type",
    }
}

fn is_oid(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b.len() <= 10 && b.iter().all(u8::is_ascii_digit)
}

/// The entry's path as components below the target: relative, no `..`.
fn components(raw: &[u8]) -> Result<Vec<OsString>, String> {
    if raw.is_empty() {
        return Err("an empty name".into());
    }
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err("its path climbs out of the target (`..`)".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("an absolute path: entries must be relative".into())
            }
        }
    }
    Ok(out)
}

fn cstr(name: &OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| std::io::Error::other("a NUL byte in a name"))
}

fn open_root(dest: &Path) -> std::io::Result<OwnedFd> {
    let c = cstr(dest.as_os_str())?;
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_at(parent: &OwnedFd, name: &OsStr) -> std::io::Result<OwnedFd> {
    let c = cstr(name)?;
    let fd = unsafe {
        libc::openat(
            parent.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn create_file(parent: &OwnedFd, name: &OsStr) -> std::io::Result<std::fs::File> {
    let c = cstr(name)?;
    let fd = unsafe {
        libc::openat(
            parent.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Directories of the target, walked from its root one component at a time.
struct Dirs {
    root: OwnedFd,
    dest: PathBuf,
    /// The last directory opened (consecutive entries share one).
    cached: Option<(Vec<OsString>, OwnedFd)>,
}

impl Dirs {
    /// Opens (creating when `create`) the directory at `comps`; a symlink or
    /// a file in the way is an error (ELOOP, ENOTDIR), never followed.
    fn open_dir(&mut self, comps: &[OsString], create: bool) -> std::io::Result<OwnedFd> {
        if let Some((path, fd)) = &self.cached {
            if path.as_slice() == comps {
                return fd.try_clone();
            }
        }
        let mut fd = self.root.try_clone()?;
        for c in comps {
            fd = match open_at(&fd, c) {
                Ok(next) => next,
                Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                    let name = cstr(c)?;
                    if unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o700) } != 0 {
                        let e = std::io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(e);
                        }
                    }
                    open_at(&fd, c)?
                }
                Err(e) => return Err(e),
            };
        }
        self.cached = Some((comps.to_vec(), fd.try_clone()?));
        Ok(fd)
    }

    fn error(&self, comps: &[OsString], e: std::io::Error) -> UntarError {
        let mut path = self.dest.clone();
        path.extend(comps);
        let message = match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => format!(
                "{e}: something other than a directory is in the way (never followed or replaced)"
            ),
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                format!("{e}: free space where the data directory goes, or restore elsewhere")
            }
            _ => e.to_string(),
        };
        UntarError::Write {
            path: path.display().to_string(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Options {
        Options {
            limits: Limits {
                max_bytes: 1 << 20,
                max_entries: 100,
            },
            tablespace_links: true,
        }
    }

    /// A header with `path` written raw (the Builder refuses `..` and absolute paths).
    fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o777);
        h.set_cksum();
        h
    }

    fn normal_tar(trailer: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header("global/", tar::EntryType::Directory, 0), &[][..])
            .unwrap();
        let data = vec![7u8; 70_000];
        b.append(
            &header("global/pg_control", tar::EntryType::Regular, 70_000),
            &data[..],
        )
        .unwrap();
        b.append(
            &header("./PG_VERSION", tar::EntryType::Regular, 3),
            &b"15\n"[..],
        )
        .unwrap();
        // A file whose directory has no entry of its own.
        b.append(
            &header("base/1/1259", tar::EntryType::Regular, 5),
            &b"hello"[..],
        )
        .unwrap();
        let mut l = header("pg_tblspc/16385", tar::EntryType::Symlink, 0);
        l.set_link_name("/srv/ts1").unwrap();
        l.set_cksum();
        b.append(&l, &[][..]).unwrap();
        if trailer {
            b.into_inner().unwrap()
        } else {
            b.get_ref().clone()
        }
    }

    async fn run(tar: &[u8], dest: &Path, opts: Options) -> Result<Extracted, UntarError> {
        let object: Arc<str> = Arc::from("base/part-00000.tar.zst");
        let mut x = Extractor::start(dest, opts)?;
        // Odd-sized pieces: headers and data straddle them.
        for piece in tar.chunks(1000) {
            x.feed(&object, piece.to_vec()).await?;
        }
        x.finish().await
    }

    #[tokio::test]
    async fn a_normal_tar_is_extracted_with_our_modes() {
        use std::os::unix::fs::PermissionsExt;
        for trailer in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let got = run(&normal_tar(trailer), dir.path(), limits())
                .await
                .unwrap();
            assert_eq!(got.files, 3);
            assert_eq!(got.file_bytes, 70_008);
            assert_eq!(
                got.tablespace_links,
                vec![TablespaceLink {
                    oid: "16385".into(),
                    target: "/srv/ts1".into()
                }]
            );
            assert_eq!(
                std::fs::read(dir.path().join("global/pg_control")).unwrap(),
                vec![7u8; 70_000]
            );
            assert_eq!(
                std::fs::read(dir.path().join("base/1/1259")).unwrap(),
                b"hello"
            );
            let mode = |p: &str| {
                std::fs::metadata(dir.path().join(p))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o7777
            };
            assert_eq!(mode("PG_VERSION"), 0o600);
            assert_eq!(mode("global"), 0o700);
            assert!(
                !dir.path().join("pg_tblspc/16385").exists(),
                "reported, not created"
            );
        }
    }

    async fn refused(tar: Vec<u8>, opts: Options) -> String {
        let dir = tempfile::tempdir().unwrap();
        let e = run(&tar, dir.path(), opts).await.unwrap_err();
        assert!(matches!(e, UntarError::Refused { .. }), "{e}");
        e.to_string()
    }

    fn one(h: tar::Header, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, data).unwrap();
        b.into_inner().unwrap()
    }

    #[tokio::test]
    async fn paths_out_of_the_target_are_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("data");
        std::fs::create_dir(&dest).unwrap();
        for path in ["../x", "a/../../x", "/etc/x"] {
            let tar = one(header(path, tar::EntryType::Regular, 1), b"x");
            let e = run(&tar, &dest, limits()).await.unwrap_err().to_string();
            assert!(
                e.contains(path) && e.contains("base/part-00000.tar.zst"),
                "{e}"
            );
            assert!(!parent.path().join("x").exists());
        }
    }

    #[tokio::test]
    async fn links_devices_and_fifos_are_refused() {
        let mut s = header("pg_wal", tar::EntryType::Symlink, 0);
        s.set_link_name("/etc").unwrap();
        s.set_cksum();
        let e = refused(one(s, b""), limits()).await;
        assert!(
            e.contains("\"pg_wal\"") && e.contains("symbolic link"),
            "{e}"
        );
        let mut h = header("global/pg_control", tar::EntryType::Link, 0);
        h.set_link_name("/etc/shadow").unwrap();
        h.set_cksum();
        let e = refused(one(h, b""), limits()).await;
        assert!(e.contains("hard link"), "{e}");
        let e = refused(one(header("dev", tar::EntryType::Char, 0), b""), limits()).await;
        assert!(e.contains("character device"), "{e}");
        let e = refused(one(header("fifo", tar::EntryType::Fifo, 0), b""), limits()).await;
        assert!(e.contains("fifo"), "{e}");
        // A tablespace link in a tablespace's own archive is not expected.
        let mut t = header("pg_tblspc/16385", tar::EntryType::Symlink, 0);
        t.set_link_name("/srv/ts1").unwrap();
        t.set_cksum();
        let no_links = Options {
            tablespace_links: false,
            ..limits()
        };
        assert!(refused(one(t, b""), no_links)
            .await
            .contains("symbolic link"));
    }

    #[tokio::test]
    async fn an_existing_symlink_in_the_target_is_not_followed() {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("data");
        let outside = parent.path().join("outside");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("base")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), dest.join("f")).unwrap();
        let e = run(
            &one(header("base/x", tar::EntryType::Regular, 1), b"x"),
            &dest,
            limits(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("never followed"), "{e}");
        let e = run(
            &one(header("f", tar::EntryType::Regular, 1), b"x"),
            &dest,
            limits(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("\"f\""), "{e}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn streams_over_the_bounds_are_refused() {
        let big = vec![1u8; 600 << 10];
        let tar = one(
            header("big", tar::EntryType::Regular, big.len() as u64),
            &big,
        );
        let small = Options {
            limits: Limits {
                max_bytes: 512 << 10,
                max_entries: 100,
            },
            tablespace_links: false,
        };
        let e = refused(tar.clone(), small).await;
        assert!(e.contains("longer than the 524288 bytes"), "{e}");
        // The header claims less than the stream holds: the stream bound still holds.
        let few = Options {
            limits: Limits {
                max_bytes: 1 << 30,
                max_entries: 2,
            },
            tablespace_links: true,
        };
        let e = refused(normal_tar(true), few).await;
        assert!(e.contains("more than 2 entries"), "{e}");
    }

    #[tokio::test]
    async fn damage_and_trailing_data_are_refused() {
        let mut tar = normal_tar(true);
        tar[600] ^= 1; // inside the second header's name: checksum mismatch
        assert!(refused(tar, limits())
            .await
            .contains("not a valid tar stream"));
        let mut tar = normal_tar(true);
        tar.extend(one(header("hidden", tar::EntryType::Regular, 1), b"x"));
        assert!(refused(tar, limits()).await.contains("after the end"));
        let mut tar = normal_tar(false);
        tar.truncate(tar.len() - 700);
        let e = refused(tar, limits()).await;
        assert!(e.contains("base/1/1259") || e.contains("valid tar"), "{e}");
    }
}
