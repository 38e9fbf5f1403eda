//! Objects as streams: bytes in -> zstd -> (age) -> sha256 -> multipart
//! upload, and back: download -> sha256 -> (age) -> zstd -> bytes out, with
//! the checksum and size checked when the stream ends. Memory is bounded by
//! the part size and the zstd window, whatever the object's size; the
//! decompressed output by the size the manifest records (or a cap), checked
//! as it grows, so a few KiB of zstd cannot fill a disk or the memory.

use super::age::{FileKey, Opener, Sealer};
use super::manifest::ObjectRef;
use super::store::Store;
use super::ArchiveError;
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use std::io::Write;

/// Compressed bytes are handed to the store in pieces of about this size.
const FLUSH_AT: usize = 1 << 20;
/// Input is gathered into batches this big before compression: COPY hands
/// over one row at a time, and a zstd call per row costs more than the row.
const BATCH: usize = 128 << 10;
/// Decompressed output comes in pieces of at most this size, whatever the
/// compression ratio, so a reader's memory stays bounded.
const OUT_PIECE: usize = 256 << 10;
/// How far an object may decompress when its manifest predates the recorded
/// decompressed size (`ObjectRef::raw`). Only schema scripts and globals are
/// read without one (chunks and the RDB carry `raw_bytes`), and pg_dump's
/// schema of even a very large catalog stays well under this; a few KiB of
/// zstd can claim terabytes, so some bound must hold.
pub const UNRECORDED_RAW_CAP: u64 = 256 << 20;

pub struct ObjectWriter {
    /// The store, as errors name it.
    store: String,
    path: String,
    writer: super::store::StoreWriter,
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
    batch: Vec<u8>,
    sealer: Option<Sealer>,
    hasher: Sha256,
    stored: u64,
    /// Bytes before compression.
    pub raw: u64,
    /// Newlines seen: rows, for COPY text data.
    pub rows: u64,
}

impl ObjectWriter {
    /// `path` is relative to the store's root; when the store is sealing
    /// ([`Store::sealing`]), the object is an age payload under its key.
    pub async fn create(
        store: &Store,
        path: &str,
        level: i32,
    ) -> Result<ObjectWriter, ArchiveError> {
        let writer = store.writer(path).await?;
        let encoder = zstd::stream::write::Encoder::new(Vec::with_capacity(FLUSH_AT * 2), level)
            .map_err(|e| ArchiveError::Compression(e.to_string()))?;
        Ok(ObjectWriter {
            store: store.display().to_string(),
            path: path.to_string(),
            writer,
            encoder,
            batch: Vec::with_capacity(BATCH),
            sealer: store.seal_key().map(Sealer::new),
            hasher: Sha256::new(),
            stored: 0,
            raw: 0,
            rows: 0,
        })
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        self.raw += data.len() as u64;
        self.rows += memchr::memchr_iter(b'\n', data).count() as u64;
        self.batch.extend_from_slice(data);
        if self.batch.len() < BATCH {
            return Ok(());
        }
        self.compress_batch()?;
        if self.encoder.get_ref().len() >= FLUSH_AT {
            let out = std::mem::take(self.encoder.get_mut());
            self.send(out).await?;
        }
        Ok(())
    }

    fn compress_batch(&mut self) -> Result<(), ArchiveError> {
        self.encoder
            .write_all(&self.batch)
            .map_err(|e| ArchiveError::Compression(e.to_string()))?;
        self.batch.clear();
        Ok(())
    }

    async fn send(&mut self, out: Vec<u8>) -> Result<(), ArchiveError> {
        let out = match &mut self.sealer {
            Some(s) => s.push(&out),
            None => out,
        };
        self.upload(out).await
    }

    async fn upload(&mut self, out: Vec<u8>) -> Result<(), ArchiveError> {
        self.hasher.update(&out);
        self.stored += out.len() as u64;
        self.writer
            .write(out)
            .await
            .map_err(|e| ArchiveError::Store {
                store: self.store.clone(),
                object: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Completes the upload; `rel` is how the manifest names the object.
    pub async fn finish(mut self, rel: &str) -> Result<ObjectRef, ArchiveError> {
        self.compress_batch()?;
        let encoder = std::mem::replace(
            &mut self.encoder,
            zstd::stream::write::Encoder::new(Vec::new(), 1)
                .map_err(|e| ArchiveError::Compression(e.to_string()))?,
        );
        let out = encoder
            .finish()
            .map_err(|e| ArchiveError::Compression(e.to_string()))?;
        self.send(out).await?;
        if let Some(sealer) = self.sealer.take() {
            self.upload(sealer.finish()).await?;
        }
        self.writer.close().await.map_err(|e| ArchiveError::Store {
            store: self.store.clone(),
            object: self.path.clone(),
            message: e.to_string(),
        })?;
        Ok(ObjectRef {
            path: rel.to_string(),
            size: self.stored,
            sha256: hex::encode(self.hasher.finalize()),
            raw: Some(self.raw),
        })
    }

    /// Gives up on the upload (a multipart upload is aborted, not completed).
    pub async fn abort(mut self) {
        let _ = self.writer.abort().await;
    }
}

/// Reads one object back, decompressing, and checks it against the manifest.
pub struct ObjectReader {
    /// The store, as errors name it.
    store: String,
    object: ObjectRef,
    stream: opendal::FuturesBytesStream,
    decoder: zstd::stream::raw::Decoder<'static>,
    opener: Option<Opener>,
    hasher: Sha256,
    stored: u64,
    /// The compressed piece being decoded, and how far.
    pending: bytes::Bytes,
    offset: usize,
    /// All input read and checked.
    input_done: bool,
    /// The decoder may hold output it could not hand over yet.
    more_output: bool,
    /// The last decoder call ended a zstd frame.
    frame_done: bool,
    /// Newlines seen in the decompressed bytes.
    pub rows: u64,
    /// Decompressed bytes handed over so far.
    raw: u64,
}

impl ObjectReader {
    /// `path` is the object's full path in the store; `object` its manifest
    /// entry; `key` decrypts it. Jobs go through [`super::Backup::reader`];
    /// the fuzz target opens objects directly.
    pub async fn open(
        store: &Store,
        path: &str,
        object: &ObjectRef,
        key: Option<&FileKey>,
    ) -> Result<ObjectReader, ArchiveError> {
        let reader = store.reader(path).await?;
        let stream = reader
            .into_bytes_stream(..)
            .await
            .map_err(|e| store_err(store, path, e))?;
        let decoder = zstd::stream::raw::Decoder::new()
            .map_err(|e| ArchiveError::Compression(e.to_string()))?;
        Ok(ObjectReader {
            store: store.display().to_string(),
            object: object.clone(),
            stream,
            decoder,
            opener: key.map(Opener::new),
            hasher: Sha256::new(),
            stored: 0,
            pending: bytes::Bytes::new(),
            offset: 0,
            input_done: false,
            more_output: false,
            frame_done: false,
            rows: 0,
            raw: 0,
        })
    }

    /// Decompressed bytes must stay within the recorded size, or the cap.
    fn check_growth(&self) -> Result<(), ArchiveError> {
        match self.object.raw {
            Some(n) if self.raw > n => Err(self.corrupt(format!(
                "it decompresses to more than the {n} bytes the manifest records \
                 (a decompression bomb, or a tampered object): stopped reading"
            ))),
            None if self.raw > UNRECORDED_RAW_CAP => Err(self.corrupt(format!(
                "it decompresses to more than {UNRECORDED_RAW_CAP} bytes, the limit for an \
                 object whose manifest records no decompressed size: stopped reading"
            ))),
            _ => Ok(()),
        }
    }

    fn corrupt(&self, reason: String) -> ArchiveError {
        ArchiveError::Corrupt {
            object: self.object.path.clone(),
            reason,
        }
    }

    /// The next piece of decompressed data; `None` once the object ended and
    /// checked out. Data is handed over before the checksum is known: callers
    /// commit nothing until `None`. A mismatch is an error naming the object.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ArchiveError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        loop {
            if self.offset < self.pending.len() || self.more_output || self.input_done {
                let mut out = vec![0u8; OUT_PIECE];
                let mut input = InBuffer::around(&self.pending[self.offset..]);
                let mut output = OutBuffer::around(&mut out[..]);
                let hint = self
                    .decoder
                    .run(&mut input, &mut output)
                    .map_err(|e| self.corrupt(format!("not a valid zstd stream: {e}")))?;
                let (consumed, produced) = (input.pos(), output.pos());
                self.offset += consumed;
                // The hint is 0 exactly when a call ends a frame; an idle call
                // after that reports the next frame's header size instead.
                if consumed > 0 || produced > 0 {
                    self.frame_done = hint == 0;
                }
                self.more_output = produced == OUT_PIECE;
                if produced > 0 {
                    self.raw += produced as u64;
                    self.check_growth()?;
                    out.truncate(produced);
                    self.rows += memchr::memchr_iter(b'\n', &out).count() as u64;
                    return Ok(Some(out));
                }
                if self.input_done {
                    if !self.frame_done {
                        return Err(self.corrupt("the zstd stream ends early".into()));
                    }
                    if let Some(n) = self.object.raw.filter(|&n| n != self.raw) {
                        return Err(self.corrupt(format!(
                            "it decompresses to {} bytes, the manifest records {n}",
                            self.raw
                        )));
                    }
                    return Ok(None);
                }
                if self.offset < self.pending.len() {
                    continue;
                }
            }
            let piece = self
                .stream
                .try_next()
                .await
                .map_err(|e| ArchiveError::Store {
                    store: self.store.clone(),
                    object: self.object.path.clone(),
                    message: e.to_string(),
                })?;
            match piece {
                Some(bytes) => {
                    self.stored += bytes.len() as u64;
                    if self.stored > self.object.size {
                        return Err(self.corrupt(format!(
                            "longer than the {} bytes the manifest records",
                            self.object.size
                        )));
                    }
                    self.hasher.update(&bytes);
                    self.pending = match &mut self.opener {
                        Some(o) => o
                            .push(&bytes)
                            .map_err(|e| self.corrupt(e.to_string()))?
                            .into(),
                        None => bytes,
                    };
                    self.offset = 0;
                }
                None => {
                    if self.stored != self.object.size {
                        return Err(self.corrupt(format!(
                            "{} bytes stored, the manifest records {}",
                            self.stored, self.object.size
                        )));
                    }
                    let sha = hex::encode(std::mem::take(&mut self.hasher).finalize());
                    if sha != self.object.sha256 {
                        return Err(self.corrupt(format!(
                            "sha256 {sha}, the manifest records {}",
                            self.object.sha256
                        )));
                    }
                    if let Some(o) = self.opener.take() {
                        self.pending = o.finish().map_err(|e| self.corrupt(e.to_string()))?.into();
                        self.offset = 0;
                    }
                    self.input_done = true;
                }
            }
        }
    }

    /// A small object's stored bytes, checked against its manifest entry
    /// (for age headers, which are neither compressed nor encrypted).
    pub async fn read_raw(
        store: &Store,
        path: &str,
        object: &ObjectRef,
    ) -> Result<Vec<u8>, ArchiveError> {
        let bytes = store.get(path).await?;
        let corrupt = |reason: String| ArchiveError::Corrupt {
            object: object.path.clone(),
            reason,
        };
        if bytes.len() as u64 != object.size {
            return Err(corrupt(format!(
                "{} bytes stored, the manifest records {}",
                bytes.len(),
                object.size
            )));
        }
        let sha = hex::encode(Sha256::digest(&bytes));
        if sha != object.sha256 {
            return Err(corrupt(format!(
                "sha256 {sha}, the manifest records {}",
                object.sha256
            )));
        }
        Ok(bytes)
    }

    /// Reads the object to its end, checking it, and keeps nothing: for an
    /// object only vouched for (globals in a drill). Returns its raw size.
    pub async fn check(mut self) -> Result<u64, ArchiveError> {
        while self.next().await?.is_some() {}
        Ok(self.raw)
    }

    /// Reads the whole object (for small ones: schema scripts), which is
    /// bounded like every read: by the recorded size or the cap.
    pub async fn read_all(mut self) -> Result<Vec<u8>, ArchiveError> {
        let mut all = Vec::new();
        while let Some(p) = self.next().await? {
            all.extend_from_slice(&p);
        }
        Ok(all)
    }
}

fn store_err(store: &Store, path: &str, e: opendal::Error) -> ArchiveError {
    if e.kind() == opendal::ErrorKind::NotFound {
        ArchiveError::Missing {
            object: path.to_string(),
        }
    } else {
        ArchiveError::Store {
            store: store.display().to_string(),
            object: path.to_string(),
            message: e.to_string(),
        }
    }
}
