//! The manifest: the one object that says a backup is complete, written last.
//! It lists every object with its size and checksum, the rows of each table as
//! counted at dump time, the server, the snapshot, timings, compression and the
//! plugins that decided.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

pub const FORMAT: &str = "firedrill-archive/1";
pub const MANIFEST: &str = "manifest.json";

/// One stored object, relative to the backup's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub path: String,
    /// Bytes as stored (compressed).
    pub size: u64,
    /// sha256 of the stored bytes, hex.
    pub sha256: String,
    /// Bytes after decompression: a reader stops past it (a zstd bomb) and
    /// refuses an object that ends short of it. Absent in manifests written
    /// before the field, and in chunks and the RDB, whose entries carry
    /// `raw_bytes` instead (see [`Chunk::bounded`], [`RedisEntry::bounded`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chunk {
    #[serde(flatten)]
    pub object: ObjectRef,
    pub rows: u64,
    /// COPY text bytes before compression.
    pub raw_bytes: u64,
}

impl Chunk {
    /// The object with `raw_bytes` as its decompressed size, to read it by.
    pub fn bounded(&self) -> ObjectRef {
        ObjectRef {
            raw: Some(self.raw_bytes),
            ..self.object.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableMode {
    Full,
    SchemaOnly,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableEntry {
    pub schema: String,
    pub name: String,
    pub mode: TableMode,
    /// Rows in the COPY output at dump time (0 for schema-only).
    pub rows: u64,
    pub raw_bytes: u64,
    pub chunks: Vec<Chunk>,
    /// Index names (in the table's schema) at dump time: a drill checks them.
    #[serde(default)]
    pub indexes: Vec<String>,
    /// Constraint names at dump time.
    #[serde(default)]
    pub constraints: Vec<String>,
    /// The columns of the COPY data, in its order (generated ones are not
    /// copied): a restore loads by name, since a restored table's columns
    /// may be in another order than its source's (an inheritance child whose
    /// parent gained a column). Empty in older backups: the table's own order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

impl TableEntry {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// A sequence's position at dump time (pg_dump keeps these in its data
/// section, which the archive replaces with COPY chunks).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SequenceEntry {
    pub schema: String,
    pub name: String,
    pub last_value: i64,
    pub is_called: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseEntry {
    pub name: String,
    /// The exported snapshot every worker read through.
    pub snapshot: String,
    pub pre_data: ObjectRef,
    pub post_data: ObjectRef,
    pub tables: Vec<TableEntry>,
    #[serde(default)]
    pub sequences: Vec<SequenceEntry>,
    /// Why the plan looks as it does (from the dump planner).
    #[serde(default)]
    pub plan_notes: Vec<String>,
    /// The large objects' data (their metadata, owners and grants are in
    /// pre-data). Absent when there were none, and in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large_objects: Option<LargeObjects>,
}

/// The large objects of a database at backup time. Their data is COPY text
/// of `(oid, offset, bytes)` rows, each at most [`LO_SLICE`] bytes of one
/// object, in (oid, offset) order, cut into chunks at row boundaries; an
/// empty object has no row (pre-data's `lo_create` makes it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LargeObjects {
    /// Objects, empty ones included.
    pub count: u64,
    /// Their bytes (not the COPY text's).
    pub bytes: u64,
    pub chunks: Vec<LargeObjectChunk>,
}

/// Bytes of one large object per data row.
pub const LO_SLICE: u64 = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LargeObjectChunk {
    #[serde(flatten)]
    pub chunk: Chunk,
    /// sha256 of the COPY text (before compression): a drill reads the
    /// restored objects back the same way and compares.
    pub raw_sha256: String,
    /// The first and last (oid, offset) rows it holds.
    pub first: (u32, i64),
    pub last: (u32, i64),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timings {
    pub started: i64,
    pub finished: i64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub id: String,
    pub source: String,
    pub kind: String,
    pub server_version: String,
    pub tool: String,
    pub compression: Compression,
    /// Roles and tablespaces (without passwords unless asked), when readable.
    pub globals: Option<ObjectRef>,
    pub databases: Vec<DatabaseEntry>,
    pub timings: Timings,
    /// `name@sha256-prefix` of each plugin that decided.
    #[serde(default)]
    pub plugins: Vec<String>,
    /// The lease's fencing token (coordination).
    #[serde(default)]
    pub fencing_token: Option<u64>,
    /// For `kind = "redis"`: the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisEntry>,
    /// Every other object is an age payload under the key this header wraps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// PostgreSQL: the source's major version and the pg_dump that dumped
    /// it. Absent for Redis, and in manifests written before it was recorded
    /// (see [`Manifest::server_major`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgVersions>,
    /// For `kind = "physical"`: a base backup of the whole cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalEntry>,
    /// Always last: see [`Manifest::to_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// A physical base backup: the server's tar streams, each cut into parts,
/// and where in the WAL it starts and ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhysicalEntry {
    /// The cluster's system identifier (`IDENTIFY_SYSTEM`): WAL of another
    /// cluster never applies to this backup.
    pub system_id: String,
    pub timeline: u32,
    pub start_lsn: super::wal::Lsn,
    pub end_lsn: super::wal::Lsn,
    /// The timeline the backup ended on.
    pub end_timeline: u32,
    pub segment_size: u64,
    /// The bootstrap superuser (the role with OID 10): a restored copy is
    /// checked as this role.
    pub superuser: String,
    /// The WAL from `start_lsn` to `end_lsn` is inside the base archive
    /// (`pg_wal/`): the backup restores to a consistent state without the
    /// WAL archive.
    pub wal_included: bool,
    /// `base` first, then one per tablespace.
    pub archives: Vec<TarArchive>,
    /// The server's own `backup_manifest` (PostgreSQL 13+), as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_manifest: Option<ObjectRef>,
    /// An incremental backup (PostgreSQL 17+): the backup of the same
    /// source whose `backup_manifest` the server compared against. Only
    /// the blocks changed since are stored; a restore combines the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Every backup an incremental one needs, the full backup first and the
    /// parent last (empty for a full backup): a chain is restored, kept and
    /// deleted whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
}

impl PhysicalEntry {
    /// The full backup at the root of this backup's chain (itself when full).
    pub fn root<'a>(&'a self, own_id: &'a str) -> &'a str {
        self.chain.first().map_or(own_id, String::as_str)
    }
}

/// One tar stream of a base backup: `base` (the data directory) or a
/// tablespace. Its parts, each decompressed and concatenated in order, are
/// the tar file the server sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TarArchive {
    /// `base`, or the tablespace's OID.
    pub name: String,
    /// A tablespace's directory on the source server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Each part records its decompressed size (`raw`).
    pub parts: Vec<ObjectRef>,
    pub raw_bytes: u64,
}

/// The versions behind a PostgreSQL backup: a restore needs a server at
/// least as new as the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgVersions {
    pub server_major: u32,
    /// The `--version` line of the pg_dump used, e.g. `pg_dump (PostgreSQL) 17.10`.
    pub pg_dump: String,
}

/// How a backup is encrypted: one file key per backup, wrapped for each
/// recipient in one age header object; rekey writes a new header (the next
/// generation) and leaves the data alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Encryption {
    /// `age-v1`: the age format, X25519 recipients.
    pub scheme: String,
    /// `keys/<generation>.age`.
    pub header: ObjectRef,
    pub generation: u32,
    pub recipients: Vec<RecipientEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientEntry {
    pub fingerprint: String,
    /// The public key (`age1...`), so a rekey can keep it.
    pub key: String,
}

pub const AGE_SCHEME: &str = "age-v1";

/// The header of generation `n`, relative to the backup's directory.
pub fn header_path(generation: u32) -> String {
    format!("keys/{generation}.age")
}

/// An Ed25519 signature over the manifest's bytes as stored without it
/// (the format drill reports are signed in too).
pub use super::signed::Signature;

/// Keys, and keys with an expiry, in one logical database of a Redis server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCount {
    pub keys: u64,
    pub expires: u64,
}

/// A Redis server's snapshot: one RDB object, and its key counts per
/// logical database from `INFO keyspace` just before and just after the
/// snapshot was taken (equal on a quiet server).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisEntry {
    /// `redis/dump.rdb.zst`.
    pub rdb: ObjectRef,
    /// The RDB's size before compression.
    pub raw_bytes: u64,
    pub keys_before: std::collections::BTreeMap<String, KeyCount>,
    pub keys_after: std::collections::BTreeMap<String, KeyCount>,
}

impl RedisEntry {
    /// The RDB object with `raw_bytes` as its decompressed size, to read it by.
    pub fn bounded(&self) -> ObjectRef {
        ObjectRef {
            raw: Some(self.raw_bytes),
            ..self.rdb.clone()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

impl Manifest {
    /// The PostgreSQL source's major version: recorded, or read from
    /// `server_version` in older manifests. None for Redis.
    pub fn server_major(&self) -> Option<u32> {
        if self.kind != "postgres" && self.kind != "physical" {
            return None;
        }
        if let Some(v) = &self.postgres {
            return Some(v.server_major);
        }
        let digits: String = self
            .server_version
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    }

    /// The manifest as stored: pretty JSON, and when signed, the signature
    /// appended as the last member. The signature covers the bytes without
    /// it, exactly, so checking needs no canonical JSON: cut the signature
    /// off the stored bytes ([`Manifest::unsigned_part`]) and verify.
    pub fn to_bytes(&self, sign: impl FnOnce(&[u8]) -> Option<(String, String)>) -> Vec<u8> {
        let mut m = self.clone();
        m.signature = None;
        let body = serde_json::to_vec_pretty(&m).expect("a manifest serializes");
        super::signed::to_bytes(body, sign)
    }

    /// The bytes a stored manifest's signature covers, if the stored bytes
    /// are exactly those plus this manifest's signature (nothing added,
    /// nothing moved).
    pub fn unsigned_part(&self, stored: &[u8]) -> Option<Vec<u8>> {
        super::signed::unsigned_part(stored, self.signature.as_ref()?)
    }

    /// Every object the manifest vouches for.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectRef> {
        self.encryption
            .iter()
            .map(|e| &e.header)
            .chain(self.globals.iter())
            .chain(self.redis.iter().map(|r| &r.rdb))
            .chain(self.physical.iter().flat_map(|p| {
                p.backup_manifest
                    .iter()
                    .chain(p.archives.iter().flat_map(|a| a.parts.iter()))
            }))
            .chain(self.databases.iter().flat_map(|d| {
                [&d.pre_data, &d.post_data]
                    .into_iter()
                    .chain(
                        d.tables
                            .iter()
                            .flat_map(|t| t.chunks.iter().map(|c| &c.object)),
                    )
                    .chain(
                        d.large_objects
                            .iter()
                            .flat_map(|l| l.chunks.iter().map(|c| &c.chunk.object)),
                    )
            }))
    }

    pub fn size(&self) -> u64 {
        self.objects().map(|o| o.size).sum()
    }

    fn tables(&self) -> impl Iterator<Item = &TableEntry> {
        self.databases.iter().flat_map(|d| &d.tables)
    }

    pub fn rows(&self) -> u64 {
        self.tables().map(|t| t.rows).sum()
    }

    /// COPY bytes (and the RDB) before compression.
    pub fn raw_bytes(&self) -> u64 {
        self.tables().map(|t| t.raw_bytes).sum::<u64>()
            + self.redis.as_ref().map_or(0, |r| r.raw_bytes)
            + self
                .physical
                .as_ref()
                .map_or(0, |p| p.archives.iter().map(|a| a.raw_bytes).sum())
    }

    /// Keys in the snapshot (Redis), as counted after it was taken.
    pub fn keys(&self) -> u64 {
        self.redis
            .as_ref()
            .map_or(0, |r| r.keys_after.values().map(|k| k.keys).sum())
    }

    pub fn table_count(&self) -> usize {
        self.databases.iter().map(|d| d.tables.len()).sum()
    }
}

/// `20261122T210000Z-k3x9qa`: sorts by time, unique by its random tail.
pub fn new_backup_id(now: SystemTime) -> String {
    use rand::Rng;
    let stamp = humantime::format_rfc3339_seconds(now)
        .to_string()
        .replace(['-', ':'], "");
    let mut rng = rand::rng();
    let tail: String = (0..6)
        .map(|_| {
            let n = rng.random_range(0..36u8);
            (if n < 10 { b'0' + n } else { b'a' + n - 10 }) as char
        })
        .collect();
    format!("{stamp}-{tail}")
}

/// Whether `id` has the shape of a backup id (guards paths built from input).
pub fn is_backup_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 23
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..]
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

/// Seconds since the epoch of a backup id's timestamp.
pub fn id_time(id: &str) -> Option<i64> {
    if !is_backup_id(id) {
        return None;
    }
    let s = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &id[0..4],
        &id[4..6],
        &id[6..8],
        &id[9..11],
        &id[11..13],
        &id[13..15]
    );
    let t = humantime::parse_rfc3339(&s).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// A path segment for a table's objects: safe characters kept, others %XX.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ids_sort_by_time_and_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_381_200);
        let a = new_backup_id(t);
        let b = new_backup_id(t + Duration::from_secs(1));
        assert!(a.starts_with("20261122T210000Z-"), "{a}");
        assert!(is_backup_id(&a) && a < b);
        assert_eq!(id_time(&a), Some(1_795_381_200));
        assert!(!is_backup_id("../../etc/passwd"));
        assert!(!is_backup_id("20261122T210000Z-ABCDEF"));
    }

    #[test]
    fn path_segments_are_safe() {
        assert_eq!(path_segment("public"), "public");
        assert_eq!(path_segment("Odd Schema"), "Odd%20Schema");
        assert_eq!(path_segment("a/../b"), "a%2F%2E%2E%2Fb");
    }
}
