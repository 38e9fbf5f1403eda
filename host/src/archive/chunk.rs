//! Objects as streams: bytes in -> zstd frames -> (age) -> sha256 -> multipart
//! upload, and back: download -> sha256 -> (age) -> zstd -> bytes out, with
//! the checksum and size checked when the stream ends. Memory is bounded by
//! the part size and the zstd frame, whatever the object's size; the
//! decompressed output by the size the manifest records (or a cap), checked
//! as it grows, so a few KiB of zstd cannot fill a disk or the memory.

use super::age::{FileKey, Opener, Sealer};
use super::manifest::ObjectRef;
use super::store::Store;
use super::ArchiveError;
use futures::TryStreamExt;
use sha2::{Digest, Sha256};

/// Input is compressed in independent zstd frames of this size (the last
/// one shorter), one batch each: COPY hands over one row at a time, and a
/// zstd call per row costs more than the row. One-shot frames over
/// contiguous input take zstd's fast path, where a stream's ring buffer
/// takes its slower external-dictionary one after its first wrap, and a
/// 1 MiB frame's tables fit the cache: about a third less CPU than one
/// stream at the same level for 2% more bytes (measured on COPY text;
/// tests/bench/logical.py). Every zstd decoder reads concatenated frames.
const FRAME: usize = 1 << 20;
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
    /// Input gathered for the next frame.
    batch: Vec<u8>,
    /// Batches to the compressing thread (closed without `Finish`: aborted).
    to_thread: tokio::sync::mpsc::Sender<Batch>,
    /// What it made of them, sealed and hashed, ready to upload.
    from_thread: tokio::sync::mpsc::Receiver<Vec<u8>>,
    thread: tokio::task::JoinHandle<Result<Sealed, ArchiveError>>,
    /// Bytes before compression.
    pub raw: u64,
    /// Newlines seen: rows, for COPY text data.
    pub rows: u64,
}

enum Batch {
    Data(Vec<u8>),
    Finish,
}

/// What the compressing thread made of the whole object.
struct Sealed {
    stored: u64,
    sha256: String,
}

/// Compressed frames waiting for the upload (and decompressed pieces for
/// the reader); one batch waits for the compressing thread while the next
/// fills: memory per writer stays a few MiB beside the store's part buffer.
const IN_FLIGHT: usize = 2;

impl ObjectWriter {
    /// `path` is relative to the store's root; when the store is sealing
    /// ([`Store::sealing`]), the object is an age payload under its key.
    ///
    /// Compression, encryption and hashing run on a thread of their own, so
    /// whoever feeds the writer (a COPY stream, a base backup) keeps reading
    /// while the previous batch is compressed, and several writers use
    /// several cores even when one task drives them all.
    pub async fn create(
        store: &Store,
        path: &str,
        level: i32,
    ) -> Result<ObjectWriter, ArchiveError> {
        let writer = store.writer(path).await?;
        let encoder = zstd::bulk::Compressor::new(level)
            .map_err(|e| ArchiveError::Compression(e.to_string()))?;
        let sealer = store.seal_key().map(Sealer::new);
        let (to_thread, input) = tokio::sync::mpsc::channel(1);
        let (output, from_thread) = tokio::sync::mpsc::channel(IN_FLIGHT);
        let thread = tokio::task::spawn_blocking(move || compress(encoder, sealer, input, output));
        Ok(ObjectWriter {
            store: store.display().to_string(),
            path: path.to_string(),
            writer,
            batch: Vec::with_capacity(FRAME),
            to_thread,
            from_thread,
            thread,
            raw: 0,
            rows: 0,
        })
    }

    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), ArchiveError> {
        self.raw += data.len() as u64;
        self.rows += memchr::memchr_iter(b'\n', data).count() as u64;
        // Frames of exactly FRAME bytes, whatever the pieces: a single huge
        // row costs no more memory to compress than a small one.
        while !data.is_empty() {
            let take = data.len().min(FRAME - self.batch.len());
            self.batch.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.batch.len() == FRAME {
                let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(FRAME));
                self.hand_over(Batch::Data(batch)).await?;
            }
        }
        Ok(())
    }

    /// Passes a batch to the thread, uploading what it has made meanwhile
    /// (waiting on a full queue while the thread waits on a full output
    /// would stop both).
    async fn hand_over(&mut self, batch: Batch) -> Result<(), ArchiveError> {
        loop {
            let piece = tokio::select! {
                biased;
                piece = self.from_thread.recv() => piece,
                permit = self.to_thread.reserve() => match permit {
                    Ok(p) => {
                        p.send(batch);
                        return Ok(());
                    }
                    Err(_) => None,
                },
            };
            match piece {
                Some(p) => self.upload(p).await?,
                // The thread stopped early: its error says why.
                None => return Err(self.thread_failed().await),
            }
        }
    }

    async fn thread_failed(&mut self) -> ArchiveError {
        match (&mut self.thread).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => ArchiveError::Compression("the compressing thread stopped early".into()),
            Err(e) => ArchiveError::Compression(format!("the compressing thread failed: {e}")),
        }
    }

    async fn upload(&mut self, out: Vec<u8>) -> Result<(), ArchiveError> {
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
        // An empty object is still one (empty) frame: a valid zstd stream.
        let batch = std::mem::take(&mut self.batch);
        if !batch.is_empty() || self.raw == 0 {
            self.hand_over(Batch::Data(batch)).await?;
        }
        self.hand_over(Batch::Finish).await?;
        while let Some(p) = self.from_thread.recv().await {
            self.upload(p).await?;
        }
        let sealed = match (&mut self.thread).await {
            Ok(r) => r?,
            Err(e) => {
                return Err(ArchiveError::Compression(format!(
                    "the compressing thread failed: {e}"
                )))
            }
        };
        self.writer.close().await.map_err(|e| ArchiveError::Store {
            store: self.store.clone(),
            object: self.path.clone(),
            message: e.to_string(),
        })?;
        Ok(ObjectRef {
            path: rel.to_string(),
            size: sealed.stored,
            sha256: sealed.sha256,
            raw: Some(self.raw),
        })
    }

    /// Gives up on the upload (a multipart upload is aborted, not completed).
    pub async fn abort(mut self) {
        // Closing both channels stops the thread wherever it waits.
        self.from_thread.close();
        drop(self.to_thread);
        let _ = self.writer.abort().await;
    }
}

/// The compressing thread: batches in, each a zstd frame -> (age) ->
/// sha256, out (the store gathers them into parts). Input that ends without
/// `Finish` is an abandoned object: nothing more is made of it.
fn compress(
    mut encoder: zstd::bulk::Compressor<'static>,
    sealer: Option<Sealer>,
    mut input: tokio::sync::mpsc::Receiver<Batch>,
    output: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<Sealed, ArchiveError> {
    struct Out {
        sealer: Option<Sealer>,
        hasher: Sha256,
        stored: u64,
        output: tokio::sync::mpsc::Sender<Vec<u8>>,
    }
    impl Out {
        fn emit(&mut self, out: Vec<u8>) -> Result<(), ArchiveError> {
            let out = match &mut self.sealer {
                Some(s) => s.push(&out),
                None => out,
            };
            self.send(out)
        }
        fn send(&mut self, out: Vec<u8>) -> Result<(), ArchiveError> {
            self.hasher.update(&out);
            self.stored += out.len() as u64;
            self.output.blocking_send(out).map_err(|_| abandoned())
        }
    }
    fn abandoned() -> ArchiveError {
        ArchiveError::Compression("the object was abandoned".into())
    }
    let mut out = Out {
        sealer,
        hasher: Sha256::new(),
        stored: 0,
        output,
    };
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(FRAME));
    loop {
        match input.blocking_recv() {
            Some(Batch::Data(b)) => {
                encoder
                    .compress_to_buffer(&b, &mut frame)
                    .map_err(|e| ArchiveError::Compression(e.to_string()))?;
                // A copy of its own size: the scratch stays for the next frame.
                out.emit(frame.clone())?;
            }
            Some(Batch::Finish) => break,
            None => return Err(abandoned()),
        }
    }
    if let Some(last) = out.sealer.take().map(Sealer::finish) {
        out.send(last)?;
    }
    Ok(Sealed {
        stored: out.stored,
        sha256: hex::encode(out.hasher.finalize()),
    })
}

/// Reads one object back, decompressing, and checks it against the manifest.
///
/// A task reads the stored bytes and a thread of its own checks, decrypts
/// and decompresses them, so the next piece is being fetched and unpacked
/// while the caller hands the last one on (to a COPY, a tar extractor), and
/// several readers use several cores even when one task drives them all.
pub struct ObjectReader {
    from_thread: tokio::sync::mpsc::Receiver<Unpacked>,
    fetcher: tokio::task::AbortHandle,
    object: String,
    /// Newlines seen in the decompressed bytes.
    pub rows: u64,
    /// Decompressed bytes handed over so far.
    raw: u64,
    done: bool,
}

/// From the fetching task to the unpacking thread.
enum Fetched {
    Bytes(bytes::Bytes),
    End,
    Failed(ArchiveError),
}

/// From the unpacking thread to the reader.
enum Unpacked {
    Piece(Vec<u8>),
    /// The whole object checked out.
    Done,
    Failed(ArchiveError),
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
        let mut stream = reader
            .into_bytes_stream(..)
            .await
            .map_err(|e| store_err(store, path, e))?;
        let decoder = zstd::stream::raw::Decoder::new()
            .map_err(|e| ArchiveError::Compression(e.to_string()))?;
        // One stored piece (a part, up to PART_SIZE) queued, one unpacking.
        let (to_thread, input) = tokio::sync::mpsc::channel(1);
        let (output, from_thread) = tokio::sync::mpsc::channel(IN_FLIGHT);
        let (store_name, object_path) = (store.display().to_string(), object.path.clone());
        let fetcher = tokio::spawn(async move {
            loop {
                let msg = match stream.try_next().await {
                    Ok(Some(b)) => Fetched::Bytes(b),
                    Ok(None) => Fetched::End,
                    Err(e) => Fetched::Failed(ArchiveError::Store {
                        store: store_name.clone(),
                        object: object_path.clone(),
                        message: e.to_string(),
                    }),
                };
                let last = !matches!(msg, Fetched::Bytes(_));
                if to_thread.send(msg).await.is_err() || last {
                    break;
                }
            }
        })
        .abort_handle();
        let unpacker = Unpacker {
            object: object.clone(),
            decoder,
            opener: key.map(Opener::new),
            hasher: Sha256::new(),
            stored: 0,
            raw: 0,
            frame_done: false,
            output,
        };
        tokio::task::spawn_blocking(move || unpacker.run(input));
        Ok(ObjectReader {
            from_thread,
            fetcher,
            object: object.path.clone(),
            rows: 0,
            raw: 0,
            done: false,
        })
    }

    /// The next piece of decompressed data; `None` once the object ended and
    /// checked out. Data is handed over before the checksum is known: callers
    /// commit nothing until `None`. A mismatch is an error naming the object.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ArchiveError> {
        if self.done {
            return Ok(None);
        }
        match self.from_thread.recv().await {
            Some(Unpacked::Piece(p)) => {
                self.raw += p.len() as u64;
                self.rows += memchr::memchr_iter(b'\n', &p).count() as u64;
                Ok(Some(p))
            }
            Some(Unpacked::Done) => {
                self.done = true;
                Ok(None)
            }
            Some(Unpacked::Failed(e)) => Err(e),
            // Never an end without `Done`: that would pass a cut object.
            None => Err(ArchiveError::Corrupt {
                object: self.object.clone(),
                reason: "the unpacking thread stopped before the end".into(),
            }),
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

impl Drop for ObjectReader {
    fn drop(&mut self) {
        // A reader given up on stops fetching; its thread ends with the channels.
        self.fetcher.abort();
    }
}

/// The unpacking thread's state: stored bytes in (counted and hashed, then
/// decrypted), decompressed pieces out, bounded by the recorded size.
struct Unpacker {
    object: ObjectRef,
    decoder: zstd::stream::raw::Decoder<'static>,
    opener: Option<Opener>,
    hasher: Sha256,
    stored: u64,
    raw: u64,
    /// The last decoder call ended a zstd frame.
    frame_done: bool,
    output: tokio::sync::mpsc::Sender<Unpacked>,
}

/// The reader was dropped: nothing more to do.
struct Gone;

impl Unpacker {
    fn run(mut self, input: tokio::sync::mpsc::Receiver<Fetched>) {
        let last = match self.unpack(input) {
            Ok(Ok(())) => Unpacked::Done,
            Ok(Err(e)) => Unpacked::Failed(e),
            Err(Gone) => return,
        };
        let _ = self.output.blocking_send(last);
    }

    fn unpack(
        &mut self,
        mut input: tokio::sync::mpsc::Receiver<Fetched>,
    ) -> Result<Result<(), ArchiveError>, Gone> {
        loop {
            match input.blocking_recv() {
                Some(Fetched::Bytes(bytes)) => {
                    self.stored += bytes.len() as u64;
                    if self.stored > self.object.size {
                        return Ok(Err(self.corrupt(format!(
                            "longer than the {} bytes the manifest records",
                            self.object.size
                        ))));
                    }
                    self.hasher.update(&bytes);
                    let plain = match &mut self.opener {
                        Some(o) => match o.push(&bytes) {
                            Ok(p) => p.into(),
                            Err(e) => return Ok(Err(self.corrupt(e.to_string()))),
                        },
                        None => bytes,
                    };
                    if let Err(e) = self.decode(&plain)? {
                        return Ok(Err(e));
                    }
                }
                Some(Fetched::End) => break,
                Some(Fetched::Failed(e)) => return Ok(Err(e)),
                None => return Err(Gone),
            }
        }
        if self.stored != self.object.size {
            return Ok(Err(self.corrupt(format!(
                "{} bytes stored, the manifest records {}",
                self.stored, self.object.size
            ))));
        }
        let sha = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if sha != self.object.sha256 {
            return Ok(Err(self.corrupt(format!(
                "sha256 {sha}, the manifest records {}",
                self.object.sha256
            ))));
        }
        if let Some(o) = self.opener.take() {
            match o.finish() {
                Ok(rest) => {
                    if let Err(e) = self.decode(&rest)? {
                        return Ok(Err(e));
                    }
                }
                Err(e) => return Ok(Err(self.corrupt(e.to_string()))),
            }
        }
        // Whatever the decoder still holds.
        if let Err(e) = self.decode(&[])? {
            return Ok(Err(e));
        }
        if !self.frame_done {
            return Ok(Err(self.corrupt("the zstd stream ends early".into())));
        }
        if let Some(n) = self.object.raw.filter(|&n| n != self.raw) {
            return Ok(Err(self.corrupt(format!(
                "it decompresses to {} bytes, the manifest records {n}",
                self.raw
            ))));
        }
        Ok(Ok(()))
    }

    /// Decompresses `data`, handing over pieces of at most `OUT_PIECE`.
    fn decode(&mut self, data: &[u8]) -> Result<Result<(), ArchiveError>, Gone> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let mut offset = 0;
        loop {
            let mut out = vec![0u8; OUT_PIECE];
            let mut input = InBuffer::around(&data[offset..]);
            let mut output = OutBuffer::around(&mut out[..]);
            let hint = match self.decoder.run(&mut input, &mut output) {
                Ok(h) => h,
                Err(e) => return Ok(Err(self.corrupt(format!("not a valid zstd stream: {e}")))),
            };
            let (consumed, produced) = (input.pos(), output.pos());
            offset += consumed;
            // The hint is 0 exactly when a call ends a frame; an idle call
            // after that reports the next frame's header size instead.
            if consumed > 0 || produced > 0 {
                self.frame_done = hint == 0;
            }
            if produced > 0 {
                self.raw += produced as u64;
                if let Err(e) = self.check_growth() {
                    return Ok(Err(e));
                }
                out.truncate(produced);
                self.output
                    .blocking_send(Unpacked::Piece(out))
                    .map_err(|_| Gone)?;
            }
            // A full piece may leave output behind even with no input left.
            let more_output = produced == OUT_PIECE;
            if (offset >= data.len() && !more_output) || (consumed == 0 && produced == 0) {
                return Ok(Ok(()));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::age::FileKey;
    use crate::archive::store::StoreOptions;

    fn store(dir: &std::path::Path) -> Store {
        Store::open(
            &format!("file://{}", dir.display()),
            &StoreOptions::default(),
        )
        .unwrap()
    }

    /// Text that zstd shrinks but not to nothing, in rows.
    fn rows(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("{i}\t{:x}\tsome text {}\n", i * 7919, i % 97).into_bytes())
            .collect()
    }

    async fn write(store: &Store, path: &str, data: &[u8]) -> ObjectRef {
        let mut w = ObjectWriter::create(store, path, 3).await.unwrap();
        // Pieces of uneven sizes, as COPY hands them over.
        for piece in data.chunks(7_777) {
            w.write(piece).await.unwrap();
        }
        w.finish(path).await.unwrap()
    }

    async fn read(
        store: &Store,
        object: &ObjectRef,
        key: Option<&FileKey>,
    ) -> Result<(Vec<u8>, u64), ArchiveError> {
        let mut r = ObjectReader::open(store, &object.path, object, key).await?;
        let mut out = Vec::new();
        while let Some(p) = r.next().await? {
            assert!(p.len() <= OUT_PIECE);
            out.extend_from_slice(&p);
        }
        // Once ended, it stays ended.
        assert!(r.next().await?.is_none());
        Ok((out, r.rows))
    }

    #[tokio::test]
    async fn objects_round_trip_through_the_threads_plain_and_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let data = rows(200_000);
        let plain = store(dir.path());
        for (store, name) in [
            (plain.clone(), "plain"),
            (plain.sealing(Some(FileKey::generate())), "sealed"),
        ] {
            let object = write(&store, name, &data).await;
            assert_eq!(object.raw, Some(data.len() as u64));
            let on_disk = std::fs::read(dir.path().join(name)).unwrap();
            assert_eq!(object.size, on_disk.len() as u64, "{name}");
            assert_eq!(
                object.sha256,
                hex::encode(Sha256::digest(&on_disk)),
                "{name}"
            );
            assert!(object.size < data.len() as u64 / 2, "{name}: compressed");
            let (back, n) = read(&store, &object, store.seal_key()).await.unwrap();
            assert!(back == data, "{name}: the bytes differ");
            assert_eq!(n, 200_000, "{name}");
        }
        // An empty object is a valid one.
        let empty = write(&plain, "empty", b"").await;
        assert_eq!(read(&plain, &empty, None).await.unwrap().0, b"");
    }

    /// The decompressed size of each zstd frame of `stored`.
    fn frame_sizes(mut stored: &[u8]) -> Vec<u64> {
        let mut sizes = Vec::new();
        while !stored.is_empty() {
            let n = zstd::zstd_safe::find_frame_compressed_size(stored).unwrap();
            sizes.push(
                zstd::zstd_safe::get_frame_content_size(&stored[..n])
                    .unwrap()
                    .unwrap(),
            );
            stored = &stored[n..];
        }
        sizes
    }

    #[tokio::test]
    async fn input_is_cut_into_frames_of_at_most_a_frame_whatever_the_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        // Small pieces, then one piece (a huge row) of several frames.
        let small = rows(100_000);
        let huge: Vec<u8> = rows(200_000).into_iter().filter(|&b| b != b'\n').collect();
        let mut w = ObjectWriter::create(&store, "o", 3).await.unwrap();
        for piece in small.chunks(7_777) {
            w.write(piece).await.unwrap();
        }
        w.write(&huge).await.unwrap();
        w.write(b"\n").await.unwrap();
        let object = w.finish("o").await.unwrap();
        let sizes = frame_sizes(&std::fs::read(dir.path().join("o")).unwrap());
        let total = (small.len() + huge.len() + 1) as u64;
        assert_eq!(sizes.iter().sum::<u64>(), total);
        assert!(sizes.len() as u64 >= total / FRAME as u64, "{sizes:?}");
        assert!(sizes.iter().all(|&s| s <= FRAME as u64), "{sizes:?}");
        let (back, n) = read(&store, &object, None).await.unwrap();
        assert!(back.len() as u64 == total && back[small.len()..total as usize - 1] == huge[..]);
        assert_eq!(n, 100_001);
    }

    #[tokio::test]
    async fn a_cut_or_altered_object_never_reads_as_ended() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let data = rows(100_000);
        let object = write(&store, "o", &data).await;
        let path = dir.path().join("o");
        let whole = std::fs::read(&path).unwrap();
        // Cut short, with the manifest's size matching the cut: the zstd
        // stream ends early. Then one byte changed: the checksum.
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let cut = ObjectRef {
            size: (whole.len() / 2) as u64,
            sha256: hex::encode(Sha256::digest(&whole[..whole.len() / 2])),
            ..object.clone()
        };
        let e = read(&store, &cut, None).await.unwrap_err();
        assert!(
            e.to_string().contains("ends early") || e.to_string().contains("decompresses to"),
            "{e}"
        );
        let mut altered = whole.clone();
        altered[whole.len() / 3] ^= 1;
        std::fs::write(&path, &altered).unwrap();
        let e = read(&store, &object, None).await.unwrap_err();
        assert!(
            e.to_string().contains("sha256") || e.to_string().contains("zstd"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_abandoned_writer_stops_its_thread_and_completes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        // Enough that pieces were uploaded before it is given up.
        let data = rows(1_000_000);
        let complete = |name: &str| {
            std::fs::read(dir.path().join(name))
                .ok()
                .is_some_and(|b| zstd::decode_all(&b[..]).is_ok_and(|d| d == data))
        };
        let mut w = ObjectWriter::create(&store, "gone", 3).await.unwrap();
        w.write(&data).await.unwrap();
        w.abort().await;
        assert!(!complete("gone"));
        // Dropped without either: the thread ends with its channels (a
        // hang here would stop the test).
        let mut w = ObjectWriter::create(&store, "dropped", 3).await.unwrap();
        w.write(&data).await.unwrap();
        drop(w);
        assert!(!complete("dropped"));
    }
}
