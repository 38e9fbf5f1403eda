//! Where backups live: `file:///abs/path`, `s3://bucket/prefix`,
//! `gs://bucket/prefix` (Google Cloud Storage) or `azblob://container/prefix`
//! (Azure Blob Storage), through opendal. Shown to people only as
//! [`Store::display`], which never carries credentials.

use super::age::FileKey;
use super::keys::Keys;
use super::ArchiveError;
use opendal::Operator;
use std::path::PathBuf;
use std::sync::Arc;

/// What each kind of store URL looks like, for messages.
pub const STORE_URL_FORMS: &str =
    "file:///absolute/path, s3://bucket/prefix, gs://bucket/prefix or azblob://container/prefix";

/// Settings of the cloud stores that are not in the URL; the CLI and the
/// config fill them from each cloud's usual environment.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub s3: S3Options,
    pub gcs: GcsOptions,
    pub azure: AzureOptions,
}

/// S3 settings that are not in the URL; the `S3_*` environment variables of
/// the common backup templates fill them in the CLI.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// Google Cloud Storage settings, under the names every Google client reads.
#[derive(Debug, Clone, Default)]
pub struct GcsOptions {
    /// `GOOGLE_APPLICATION_CREDENTIALS`: a service account JSON key file.
    pub credentials_file: Option<PathBuf>,
    /// `STORAGE_EMULATOR_HOST`: an emulator (`host:port` or a URL), spoken
    /// to without credentials, as Google's own clients do.
    pub emulator_host: Option<String>,
    /// Another endpoint than storage.googleapis.com (a private gateway),
    /// still with the service account's credentials.
    pub endpoint: Option<String>,
}

/// Azure Blob Storage settings, under the names of the Azure CLI and SDKs.
#[derive(Clone, Default)]
pub struct AzureOptions {
    /// `AZURE_STORAGE_CONNECTION_STRING`: account, key (or SAS) and endpoints.
    pub connection_string: Option<String>,
    /// `AZURE_STORAGE_ACCOUNT`.
    pub account: Option<String>,
    /// `AZURE_STORAGE_KEY`: the account's shared key (base64).
    pub key: Option<String>,
    /// `AZURE_STORAGE_SAS_TOKEN`: a shared access signature instead of a key.
    pub sas_token: Option<String>,
    /// `AZURE_STORAGE_SERVICE_ENDPOINT`: the blob endpoint, for Azurite or
    /// another cloud (default `https://<account>.blob.core.windows.net`).
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for AzureOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |o: &Option<String>| o.as_ref().map(|_| "[set]");
        f.debug_struct("AzureOptions")
            .field("connection_string", &set(&self.connection_string))
            .field("account", &self.account)
            .field("key", &set(&self.key))
            .field("sas_token", &set(&self.sas_token))
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl AzureOptions {
    /// The secret values among these settings (for the log redactor): the
    /// key, the SAS, the connection string and the secrets inside it.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = [&self.key, &self.sas_token, &self.connection_string]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if let Some(cs) = &self.connection_string {
            for (k, v) in connection_string_pairs(cs) {
                if k.eq_ignore_ascii_case("AccountKey")
                    || k.eq_ignore_ascii_case("SharedAccessSignature")
                {
                    out.push(v.to_string());
                }
            }
        }
        out.retain(|s| !s.is_empty());
        out
    }
}

/// `Key=Value;Key=Value` pairs of an Azure connection string (values may
/// hold '=', base64 keys end with it).
fn connection_string_pairs(cs: &str) -> impl Iterator<Item = (&str, &str)> {
    cs.split(';')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// Checks a store URL's form without opening it (no credentials needed):
/// the scheme, and a bucket or container name the cloud would accept.
pub fn check_url(url: &str) -> Result<(), String> {
    let expected = || format!("expected {STORE_URL_FORMS}");
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(format!(
                "a file store needs an absolute path ({})",
                expected()
            ));
        }
        return Ok(());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("not a store URL ({})", expected()));
    };
    let (name, _) = rest.split_once('/').unwrap_or((rest, ""));
    match scheme {
        "s3" => {
            if name.is_empty() {
                return Err("no bucket in the store URL (s3://bucket/prefix)".into());
            }
            Ok(())
        }
        "gs" => check_gcs_bucket(name),
        "azblob" => check_azure_container(name),
        "gcs" => Err(format!("{scheme}:// is not a store scheme: Google Cloud Storage is gs://bucket/prefix")),
        "az" | "azure" | "wasb" | "wasbs" | "abfs" | "abfss" => Err(format!(
            "{scheme}:// is not a store scheme: Azure Blob Storage is azblob://container/prefix (the account comes from AZURE_STORAGE_ACCOUNT or AZURE_STORAGE_CONNECTION_STRING)"
        )),
        other => Err(format!("unsupported store {other:?} ({})", expected())),
    }
}

/// Google's bucket naming rules, so a typo fails before any request.
fn check_gcs_bucket(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    let ends_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() {
        return Err("no bucket in the store URL (gs://bucket/prefix)".into());
    }
    // Dotted (domain-named) buckets may be longer.
    let max = if name.contains('.') { 222 } else { 63 };
    if !(3..=max).contains(&name.len()) || !ok_chars || !ends_ok {
        return Err(format!(
            "{name:?} is not a Google Cloud Storage bucket name: 3 to 63 lowercase letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Azure's container naming rules.
fn check_azure_container(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("no container in the store URL (azblob://container/prefix)".into());
    }
    let ok = (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !name.contains("--");
    if !ok {
        return Err(format!(
            "{name:?} is not an Azure container name: 3 to 63 lowercase letters, digits and single '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A shared access signature's `sig=` in a URL an error quotes, hidden.
fn censor_sig(message: String) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while let Some(i) = rest.find("sig=") {
        out.push_str(&rest[..i + 4]);
        out.push_str("[hidden]");
        rest = &rest[i + 4..];
        let end = rest.find(['&', '"', ' ', ',', ')']).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
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
    /// Objects larger than a part go up as GCS resumable uploads (see
    /// [`StoreWriter`]).
    resumable: bool,
    /// A file store: writes go straight to the file, with no part buffer
    /// per object being written.
    local: bool,
}

/// Where a file store keeps whole-object writes until they are renamed in.
pub const FILE_STORE_TMP: &str = ".firedrill-tmp";

/// Stored objects are uploaded in parts of this size: memory per open writer.
pub const PART_SIZE: usize = 8 << 20;

impl Store {
    pub fn open(url: &str, opts: &StoreOptions) -> Result<Store, ArchiveError> {
        // HTTP-based services need a transport; installing twice is a no-op.
        opendal::install_default();
        check_url(url).map_err(ArchiveError::StoreUrl)?;
        let bad = |m: &str| ArchiveError::StoreUrl(m.to_string());
        if let Some(path) = url.strip_prefix("file://") {
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
                resumable: false,
                local: true,
            });
        }
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        let display = format!("{scheme}://{name}/{prefix}");
        let root = format!("/{prefix}");
        let built = match scheme {
            "s3" => {
                let s3 = &opts.s3;
                let mut b = opendal::services::S3::default()
                    .bucket(name)
                    .root(&root)
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
                Operator::new(b)
            }
            "gs" => Operator::new(gcs_builder(&display, name, &root, &opts.gcs)?),
            "azblob" => Operator::new(azure_builder(&display, name, &root, &opts.azure)?),
            _ => return Err(bad(&format!("unsupported store {scheme:?}"))),
        };
        // Builder errors name settings, never their values.
        let op = built
            .map_err(|e| {
                ArchiveError::StoreUrl(format!("{display}: {}", censor_sig(e.to_string())))
            })?
            .layer(
                opendal::layers::RetryLayer::new()
                    .with_max_times(4)
                    .with_jitter(),
            );
        Ok(Store {
            atomic: op.clone(),
            op,
            display,
            keys: Arc::default(),
            seal: None,
            resumable: scheme == "gs",
            local: false,
        })
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
                message: match e.kind() {
                    opendal::ErrorKind::PermissionDenied => format!(
                        "the store refused these credentials (check the key, its account and its permissions): {}",
                        censor_sig(e.to_string())
                    ),
                    _ => censor_sig(e.to_string()),
                },
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
    pub async fn writer(&self, path: &str) -> Result<StoreWriter, ArchiveError> {
        if self.resumable {
            return Ok(StoreWriter::Held {
                op: self.op.clone(),
                path: path.to_string(),
                held: Vec::new(),
            });
        }
        let w = self.op.writer_with(path);
        let w = match self.local {
            true => w.await,
            false => w.chunk(PART_SIZE).await,
        };
        w.map(StoreWriter::Streaming).map_err(|e| self.err(path, e))
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
        if self.resumable {
            // GCS: one DELETE per object. opendal's recursive delete sends
            // them 100 to a JSON API batch request, which fake-gcs-server
            // (the emulator the tests run) answers 400; single deletes work
            // everywhere, at one request per object.
            use futures::StreamExt as _;
            let objects = self.list_recursive(dir).await?;
            let mut deletes = futures::stream::iter(objects)
                .map(|(path, _)| async move { self.delete(&path).await })
                .buffer_unordered(8);
            while let Some(r) = deletes.next().await {
                r?;
            }
            return self.delete(dir).await;
        }
        self.op
            .delete_with(dir)
            .recursive(true)
            .await
            .map_err(|e| self.err(dir, e))
    }
}

/// `what` is missing for the store `display`: a message that says where
/// each cloud's settings come from.
fn missing(display: &str, what: &str) -> ArchiveError {
    ArchiveError::StoreUrl(format!("{display}: {what}"))
}

fn gcs_builder(
    display: &str,
    bucket: &str,
    root: &str,
    gcs: &GcsOptions,
) -> Result<opendal::services::Gcs, ArchiveError> {
    // Only what is configured here is used: no metadata server, no
    // well-known files read behind the operator's back.
    let b = opendal::services::Gcs::default()
        .bucket(bucket)
        .root(root)
        .disable_config_load()
        .disable_vm_metadata();
    if let Some(host) = gcs
        .emulator_host
        .as_deref()
        .filter(|h| !h.trim().is_empty())
    {
        let host = host.trim().trim_end_matches('/');
        let endpoint = if host.contains("://") {
            host.to_string()
        } else {
            format!("http://{host}")
        };
        return Ok(b.endpoint(&endpoint).skip_signature());
    }
    let Some(file) = &gcs.credentials_file else {
        return Err(missing(
            display,
            "no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service account JSON key file (or STORAGE_EMULATOR_HOST for an emulator)",
        ));
    };
    // Read here so a wrong path or file fails now, with a message that
    // names the file and never its contents.
    let text = std::fs::read_to_string(file).map_err(|e| {
        missing(
            display,
            &format!(
                "GOOGLE_APPLICATION_CREDENTIALS: cannot read {}: {e}",
                file.display()
            ),
        )
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
        missing(
            display,
            &format!(
                "GOOGLE_APPLICATION_CREDENTIALS: {} is not JSON (expected a service account key file)",
                file.display()
            ),
        )
    })?;
    let kind = json.get("type").and_then(|t| t.as_str()).unwrap_or("");
    let has = |k: &str| {
        json.get(k)
            .and_then(|v| v.as_str())
            .is_some_and(|v| !v.is_empty())
    };
    let usable = match kind {
        "service_account" => has("client_email") && has("private_key"),
        "authorized_user" => has("client_id") && has("client_secret") && has("refresh_token"),
        "external_account" | "impersonated_service_account" => true,
        _ => false,
    };
    if !usable {
        return Err(missing(
            display,
            &format!(
                "GOOGLE_APPLICATION_CREDENTIALS: {} is not a usable credentials file (a service account key needs \"type\": \"service_account\", client_email and private_key)",
                file.display()
            ),
        ));
    }
    let mut b = b.credential_path(&file.to_string_lossy());
    if let Some(e) = gcs.endpoint.as_deref().filter(|e| !e.trim().is_empty()) {
        b = b.endpoint(e.trim().trim_end_matches('/'));
    }
    Ok(b)
}

fn azure_builder(
    display: &str,
    container: &str,
    root: &str,
    az: &AzureOptions,
) -> Result<opendal::services::Azblob, ArchiveError> {
    let nonempty = |o: &Option<String>| {
        o.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let mut b = match nonempty(&az.connection_string) {
        Some(cs) => {
            let pairs: Vec<(&str, &str)> = connection_string_pairs(&cs).collect();
            let has = |k: &str| {
                pairs
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case(k) && !v.is_empty())
            };
            let dev = pairs.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("UseDevelopmentStorage") && v.eq_ignore_ascii_case("true")
            });
            if !dev && !has("AccountKey") && !has("SharedAccessSignature") {
                return Err(missing(
                    display,
                    "AZURE_STORAGE_CONNECTION_STRING has no AccountKey or SharedAccessSignature: copy the storage account's whole connection string (Access keys in the portal)",
                ));
            }
            // opendal's parse error could quote the string: say what is
            // wrong in our words instead.
            opendal::services::Azblob::from_connection_string(&cs).map_err(|_| {
                missing(
                    display,
                    "AZURE_STORAGE_CONNECTION_STRING is not a connection string (expected AccountName=...;AccountKey=...;EndpointSuffix=... or BlobEndpoint=...)",
                )
            })?
        }
        None => {
            let Some(account) = nonempty(&az.account) else {
                return Err(missing(
                    display,
                    "no Azure storage account: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY (or AZURE_STORAGE_SAS_TOKEN)",
                ));
            };
            let mut b = opendal::services::Azblob::default()
                .account_name(&account)
                .endpoint(&format!("https://{account}.blob.core.windows.net"));
            match (nonempty(&az.key), nonempty(&az.sas_token)) {
                (Some(key), _) => {
                    use base64::Engine as _;
                    if base64::engine::general_purpose::STANDARD.decode(&key).is_err() {
                        return Err(missing(
                            display,
                            "AZURE_STORAGE_KEY is not an account key (expected the base64 key from the storage account's Access keys)",
                        ));
                    }
                    b = b.account_key(&key);
                }
                (None, Some(sas)) => b = b.sas_token(sas.trim_start_matches('?')),
                (None, None) => {
                    return Err(missing(
                        display,
                        "no Azure credentials: set AZURE_STORAGE_KEY (or AZURE_STORAGE_SAS_TOKEN) with AZURE_STORAGE_ACCOUNT, or AZURE_STORAGE_CONNECTION_STRING",
                    ))
                }
            }
            b
        }
    };
    if let Some(e) = nonempty(&az.endpoint) {
        b = b.endpoint(e.trim_end_matches('/'));
    }
    Ok(b.container(container).root(root))
}

/// Writes one object: on most stores an opendal multipart writer; on GCS
/// the bytes are held until they outgrow one part. An object that never does
/// goes up in one request (the JSON API's single upload, which a retry simply
/// repeats); a larger one becomes a resumable upload. opendal uploads GCS
/// parts through the XML API's multipart upload unless the write is
/// conditional, and takes the JSON API's resumable upload (Google's
/// recommended way for large objects, and the one GCS emulators implement)
/// for `if_not_exists`, which holds anyway: each object of a backup is
/// written once, at a new name. A resumable upload's retries ask the session
/// how far it got.
pub enum StoreWriter {
    Streaming(opendal::Writer),
    Held {
        op: Operator,
        path: String,
        held: Vec<u8>,
    },
}

impl StoreWriter {
    pub async fn write(&mut self, bytes: Vec<u8>) -> opendal::Result<()> {
        match self {
            StoreWriter::Streaming(w) => w.write(bytes).await,
            StoreWriter::Held { op, path, held } => {
                if held.len() + bytes.len() <= PART_SIZE {
                    held.extend_from_slice(&bytes);
                    return Ok(());
                }
                let mut w = op
                    .writer_with(path)
                    .chunk(PART_SIZE)
                    .if_not_exists(true)
                    .await?;
                w.write(std::mem::take(held)).await?;
                w.write(bytes).await?;
                *self = StoreWriter::Streaming(w);
                Ok(())
            }
        }
    }

    pub async fn close(&mut self) -> opendal::Result<opendal::Metadata> {
        match self {
            StoreWriter::Streaming(w) => w.close().await,
            StoreWriter::Held { op, path, held } => op.write(path, std::mem::take(held)).await,
        }
    }

    pub async fn abort(&mut self) -> opendal::Result<()> {
        match self {
            StoreWriter::Streaming(w) => w.abort().await,
            StoreWriter::Held { held, .. } => {
                held.clear();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_by_scheme_and_name() {
        for ok in [
            "file:///var/backups",
            "s3://b/p",
            "gs://my-bucket_1/pg/x",
            "gs://backups.example.com",
            "azblob://backups-1/pg",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("file://relative", "absolute path"),
            ("gs://", "no bucket"),
            ("gs://UPPER/p", "not a Google Cloud Storage bucket name"),
            ("gs://-dash/p", "not a Google Cloud Storage bucket name"),
            ("gcs://b/p", "gs://bucket/prefix"),
            ("azblob://", "no container"),
            ("azblob://a--b/p", "not an Azure container name"),
            ("azblob://ab/p", "not an Azure container name"),
            (
                "wasbs://c@acct.blob.core.windows.net/p",
                "azblob://container/prefix",
            ),
            ("ftp://x/y", "unsupported store"),
            ("backups", "not a store URL"),
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_sas_signature_in_an_error_is_hidden() {
        let m = censor_sig(
            "uri: https://a.blob.core.windows.net/c?sv=2021&sig=abc%2Fdef&se=1 failed".into(),
        );
        assert_eq!(
            m,
            "uri: https://a.blob.core.windows.net/c?sv=2021&sig=[hidden]&se=1 failed"
        );
    }

    #[test]
    fn azure_secrets_include_the_key_inside_a_connection_string() {
        let o = AzureOptions {
            connection_string: Some(
                "AccountName=a;AccountKey=S2V5PT0=;BlobEndpoint=http://h/a".into(),
            ),
            ..Default::default()
        };
        assert!(o.secrets().contains(&"S2V5PT0=".to_string()));
        assert!(!format!("{o:?}").contains("S2V5PT0="));
    }

    #[test]
    fn cloud_stores_without_credentials_say_what_to_set() {
        let e = Store::open("azblob://backups/pg", &StoreOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("azblob://backups/pg") && e.contains("AZURE_STORAGE_KEY"),
            "{e}"
        );
        let e = Store::open("gs://backups/pg", &StoreOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{e}");
        let mut opts = StoreOptions::default();
        opts.azure.account = Some("acct".into());
        opts.azure.key = Some("S2V5PT0=".into());
        let s = Store::open("azblob://backups/pg/", &opts).unwrap();
        assert_eq!(s.display(), "azblob://backups/pg");
    }
}
