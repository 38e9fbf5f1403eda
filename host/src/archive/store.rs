//! Where backups live: `file:///abs/path` or `s3://bucket/prefix`, through
//! opendal (so GCS and Azure are a builder away). Shown to people only as
//! [`Store::display`], which never carries credentials.

use super::age::FileKey;
use super::keys::Keys;
use super::ArchiveError;
use opendal::Operator;
use std::sync::Arc;

/// S3 settings that are not in the URL; the `S3_*` environment variables of
/// the common backup templates fill them in the CLI.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

#[derive(Clone)]
pub struct Store {
    op: Operator,
    /// For whole-object writes (manifests, headers, reports): on a file
    /// store they go to a temporary file renamed into place, so a crash
    /// mid-write never leaves half a manifest (an S3 PUT is atomic already).
    atomic: Operator,
    display: String,
    keys: Arc<Keys>,
    /// Set for the duration of one backup: objects written through
    /// [`super::ObjectWriter`] are age payloads under this key.
    seal: Option<FileKey>,
}

/// Where a file store keeps whole-object writes until they are renamed in.
pub const FILE_STORE_TMP: &str = ".firedrill-tmp";

/// Stored objects are uploaded in parts of this size: memory per open writer.
pub const PART_SIZE: usize = 8 << 20;

impl Store {
    pub fn open(url: &str, s3: &S3Options) -> Result<Store, ArchiveError> {
        // HTTP-based services need a transport; installing twice is a no-op.
        opendal::install_default();
        let bad = |m: &str| {
            ArchiveError::StoreUrl(format!(
                "{m} (expected file:///absolute/path or s3://bucket/prefix)"
            ))
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file store needs an absolute path"));
            }
            std::fs::create_dir_all(path).map_err(|e| {
                ArchiveError::StoreUrl(format!("cannot create the store directory {path}: {e}"))
            })?;
            let op = Operator::new(opendal::services::Fs::default().root(path))
                .map_err(|e| ArchiveError::StoreUrl(e.to_string()))?;
            let tmp = format!("{}/{FILE_STORE_TMP}", path.trim_end_matches('/'));
            let atomic = Operator::new(
                opendal::services::Fs::default()
                    .root(path)
                    .atomic_write_dir(&tmp),
            )
            .map_err(|e| ArchiveError::StoreUrl(e.to_string()))?;
            return Ok(Store {
                op,
                atomic,
                display: url.to_string(),
                keys: Arc::default(),
                seal: None,
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket in the store URL"));
            }
            let mut b = opendal::services::S3::default()
                .bucket(bucket)
                .root(&format!("/{}", prefix.trim_matches('/')))
                .region(s3.region.as_deref().unwrap_or("us-east-1"))
                .disable_config_load()
                .disable_ec2_metadata();
            if let Some(e) = &s3.endpoint {
                b = b.endpoint(e);
            }
            if let Some(k) = &s3.access_key_id {
                b = b.access_key_id(k);
            }
            if let Some(k) = &s3.secret_access_key {
                b = b.secret_access_key(k);
            }
            let op = Operator::new(b)
                .map_err(|e| ArchiveError::StoreUrl(e.to_string()))?
                .layer(
                    opendal::layers::RetryLayer::new()
                        .with_max_times(4)
                        .with_jitter(),
                );
            return Ok(Store {
                atomic: op.clone(),
                op,
                display: format!("s3://{bucket}/{}", prefix.trim_matches('/')),
                keys: Arc::default(),
                seal: None,
            });
        }
        Err(bad(&format!(
            "unsupported store {:?}",
            url.split("://").next().unwrap_or(url)
        )))
    }

    pub fn display(&self) -> &str {
        &self.display
    }

    /// The same store, used with these keys.
    pub fn with_keys(mut self, keys: Keys) -> Store {
        self.keys = Arc::new(keys);
        self
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The same store, sealing new objects under one backup's key.
    pub fn sealing(&self, key: Option<FileKey>) -> Store {
        Store {
            seal: key,
            ..self.clone()
        }
    }

    pub(crate) fn seal_key(&self) -> Option<&FileKey> {
        self.seal.as_ref()
    }

    fn err(&self, path: &str, e: opendal::Error) -> ArchiveError {
        if e.kind() == opendal::ErrorKind::NotFound {
            ArchiveError::Missing {
                object: path.to_string(),
            }
        } else {
            ArchiveError::Store {
                store: self.display.clone(),
                object: path.to_string(),
                message: e.to_string(),
            }
        }
    }

    pub async fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        self.atomic
            .write(path, bytes)
            .await
            .map(drop)
            .map_err(|e| self.err(path, e))
    }

    pub async fn get(&self, path: &str) -> Result<Vec<u8>, ArchiveError> {
        self.op
            .read(path)
            .await
            .map(|b| b.to_vec())
            .map_err(|e| self.err(path, e))
    }

    /// A multipart writer; nothing is visible at `path` until `close`.
    pub async fn writer(&self, path: &str) -> Result<opendal::Writer, ArchiveError> {
        self.op
            .writer_with(path)
            .chunk(PART_SIZE)
            .await
            .map_err(|e| self.err(path, e))
    }

    pub async fn reader(&self, path: &str) -> Result<opendal::Reader, ArchiveError> {
        self.op
            .reader_with(path)
            .chunk(PART_SIZE)
            .await
            .map_err(|e| self.err(path, e))
    }

    /// Names directly under `dir` (which ends with '/'); directories end with '/'.
    pub async fn list(&self, dir: &str) -> Result<Vec<String>, ArchiveError> {
        let entries = self.op.list(dir).await.map_err(|e| self.err(dir, e))?;
        Ok(entries
            .into_iter()
            .map(|e| e.path().to_string())
            .filter(|p| p != dir)
            .map(|p| p.strip_prefix(dir).unwrap_or(&p).to_string())
            .collect())
    }

    /// Every object under `dir`, recursively, with sizes.
    pub async fn list_recursive(&self, dir: &str) -> Result<Vec<(String, u64)>, ArchiveError> {
        let entries = self
            .op
            .list_with(dir)
            .recursive(true)
            .await
            .map_err(|e| self.err(dir, e))?;
        let mut out = Vec::new();
        for e in entries {
            if e.metadata().is_file() {
                let size = match e.metadata().content_length() {
                    0 => self
                        .op
                        .stat(e.path())
                        .await
                        .map(|m| m.content_length())
                        .unwrap_or(0),
                    n => n,
                };
                out.push((e.path().to_string(), size));
            }
        }
        Ok(out)
    }

    pub async fn delete(&self, path: &str) -> Result<(), ArchiveError> {
        self.op.delete(path).await.map_err(|e| self.err(path, e))
    }

    /// Everything under `dir` (which ends with '/'), the directory included.
    pub async fn delete_all(&self, dir: &str) -> Result<(), ArchiveError> {
        self.op
            .delete_with(dir)
            .recursive(true)
            .await
            .map_err(|e| self.err(dir, e))
    }
}
