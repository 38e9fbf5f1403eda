//! The WAL archive's layout: positions (LSNs), timelines, segment names and
//! where each segment lives in the store.
//!
//! ```text
//! <source>/wal/<TLI>/<SEGMENT>            zstd (then age, a whole age file) of one 16 MiB segment
//! <source>/wal/<TLI>/<SEGMENT>.json       its record: size, sha256, LSN range; written LAST (the commit)
//! <source>/wal/<TLI>/<SEGMENT>.partial    the segment being written when a streamer stopped
//! <source>/wal/<TLI>.history              a timeline's history file, as the server gave it
//! ```
//!
//! Invariant: names are made here and parsed here; a name read from a store
//! that does not parse is not WAL (never a path to follow).

use super::{ArchiveError, Store};
use serde::{Deserialize, Serialize};

/// A position in the WAL, printed as PostgreSQL does (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Lsn, String> {
        let bad = || format!("{s:?} is not an LSN (expected two hex numbers, e.g. 0/16B3748)");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(bad());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn(hi << 32 | lo))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The segment size of a server that has not told (PostgreSQL's default).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// A server's WAL segment size (`wal_segment_size`): a power of two from
/// 1 MiB to 1 GiB, as initdb allows.
pub fn check_segment_size(size: u64) -> Result<u64, String> {
    if size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&size) {
        Ok(size)
    } else {
        Err(format!(
            "wal_segment_size {size} is not a power of two between 1 MiB and 1 GiB"
        ))
    }
}

/// One segment of one timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    /// The segment number: its first byte's LSN / segment size.
    pub number: u64,
}

impl Segment {
    /// The segment holding `lsn`.
    pub fn of(timeline: u32, lsn: Lsn, size: u64) -> Segment {
        Segment {
            timeline,
            number: lsn.0 / size,
        }
    }

    pub fn start(&self, size: u64) -> Lsn {
        Lsn(self.number * size)
    }

    pub fn end(&self, size: u64) -> Lsn {
        Lsn((self.number + 1) * size)
    }

    pub fn next(&self) -> Segment {
        Segment {
            timeline: self.timeline,
            number: self.number + 1,
        }
    }

    /// The file name PostgreSQL gives it: `TTTTTTTTXXXXXXXXYYYYYYYY`.
    pub fn file_name(&self, size: u64) -> String {
        let per_id = 0x1_0000_0000 / size;
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per_id,
            self.number % per_id
        )
    }

    /// Reads a segment file name (what `restore_command`'s `%f` gives).
    pub fn parse(name: &str, size: u64) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
        let lo = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per_id = 0x1_0000_0000 / size;
        if timeline == 0 || lo >= per_id {
            return None;
        }
        Some(Segment {
            timeline,
            number: hi * per_id + lo,
        })
    }
}

/// `TTTTTTTT.history`, the file naming timeline `tli`'s history.
pub fn history_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

/// The timeline a history file name names.
pub fn parse_history_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".history")?;
    (hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
        .filter(|t| *t > 0)
}

/// The WAL directory of a source, relative to the store's root.
pub fn wal_dir(source: &str) -> String {
    format!("{}/wal/", super::manifest::path_segment(source))
}

pub fn timeline_dir(source: &str, timeline: u32) -> String {
    format!("{}{timeline:08X}/", wal_dir(source))
}

/// Where a segment's bytes live; `partial` for the one a stopped streamer
/// had not finished.
pub fn segment_path(source: &str, seg: &Segment, size: u64, partial: bool) -> String {
    format!(
        "{}{}{}",
        timeline_dir(source, seg.timeline),
        seg.file_name(size),
        if partial { ".partial" } else { "" }
    )
}

/// Where a segment's record lives (the commit of its upload).
pub fn record_path(source: &str, seg: &Segment, size: u64, partial: bool) -> String {
    format!("{}.json", segment_path(source, seg, size, partial))
}

pub fn history_path(source: &str, timeline: u32) -> String {
    format!("{}{}", wal_dir(source), history_name(timeline))
}

/// What the archive knows of one stored segment: written after the segment,
/// signed like a manifest when a signing key is configured. Its checksum is
/// checked before a byte of the segment is used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub format: String,
    pub source: String,
    pub system_id: String,
    pub timeline: u32,
    /// The segment's file name.
    pub segment: String,
    pub segment_size: u64,
    /// The WAL the object holds: from the segment's start to `end` (the
    /// segment's end, or less for a partial one).
    pub start: Lsn,
    pub end: Lsn,
    pub partial: bool,
    /// The object as stored (after zstd and age).
    pub size: u64,
    pub sha256: String,
    /// `zstd`, or `zstd+age-v1` (the object is a whole age file).
    pub encoding: String,
    /// The lease's fencing token of the streamer that wrote it.
    #[serde(default)]
    pub fencing_token: Option<u64>,
    /// The heartbeat the streamer was writing into the source (seconds):
    /// how close to the archive's end a point-in-time drill may aim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_seconds: Option<u64>,
    pub archived_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<super::signed::Signature>,
}

pub const SEGMENT_FORMAT: &str = "firedrill-wal-1";

impl SegmentRecord {
    /// The record of the WAL of `seg` from its start to `end` (its end,
    /// or less for a partial one); size, checksum and encoding are filled
    /// in by [`put`], the writer's token and heartbeat by the caller.
    pub fn segment(
        source: &str,
        system_id: &str,
        seg: &Segment,
        size: u64,
        end: Lsn,
    ) -> SegmentRecord {
        SegmentRecord {
            format: SEGMENT_FORMAT.into(),
            source: source.into(),
            system_id: system_id.into(),
            timeline: seg.timeline,
            segment: seg.file_name(size),
            segment_size: size,
            start: seg.start(size),
            end,
            partial: end < seg.end(size),
            size: 0,
            sha256: String::new(),
            encoding: String::new(),
            fencing_token: None,
            heartbeat_seconds: None,
            archived_at: super::manifest::unix_now(),
            signature: None,
        }
    }

    /// The record of timeline `tli`'s history file (`system_id` may be
    /// empty: the file does not say, and `wal push` cannot tell).
    pub fn history(source: &str, system_id: &str, tli: u32) -> SegmentRecord {
        SegmentRecord {
            segment: history_name(tli),
            segment_size: 0,
            start: Lsn(0),
            end: Lsn(0),
            partial: false,
            ..SegmentRecord::segment(
                source,
                system_id,
                &Segment {
                    timeline: tli,
                    number: 0,
                },
                DEFAULT_SEGMENT_SIZE,
                Lsn(0),
            )
        }
    }
}

/// zstd, then (with recipients) a whole age file: a fresh file key per
/// object, its header in front, so `age -d -i key.txt <object> | zstd -d`
/// gives the segment back with the stock tools. Returns the stored bytes
/// and their encoding's name.
pub fn encode(
    data: &[u8],
    level: i32,
    recipients: &[super::age::Recipient],
) -> Result<(Vec<u8>, &'static str), ArchiveError> {
    let compressed =
        zstd::bulk::compress(data, level).map_err(|e| ArchiveError::Compression(e.to_string()))?;
    if recipients.is_empty() {
        return Ok((compressed, "zstd"));
    }
    let key = super::age::FileKey::generate();
    let mut out = super::age::wrap(&key, recipients);
    let mut sealer = super::age::Sealer::new(&key);
    out.extend(sealer.push(&compressed));
    out.extend(sealer.finish());
    Ok((out, "zstd+age-v1"))
}

/// The segment inside a stored object whose record says how it was
/// encoded; `max` bounds the decompressed size (a few bytes of zstd can
/// claim gigabytes).
fn decode(
    object: &str,
    stored: &[u8],
    record: &SegmentRecord,
    identities: &[super::age::Identity],
    max: u64,
) -> Result<Vec<u8>, ArchiveError> {
    let corrupt = |reason: String| ArchiveError::Corrupt {
        object: object.to_string(),
        reason,
    };
    let compressed = match record.encoding.as_str() {
        "zstd" => std::borrow::Cow::Borrowed(stored),
        "zstd+age-v1" => {
            if identities.is_empty() {
                return Err(ArchiveError::Key(format!(
                    "{object} is encrypted; reading it needs an identity (--identity FILE, FIREDRILL_AGE_IDENTITY or [store] identity_files)"
                )));
            }
            let at = header_end(stored).ok_or_else(|| corrupt("no age header".into()))?;
            let key = super::age::unwrap(&stored[..at], identities).map_err(|e| match e {
                super::age::AgeError::NoMatchingIdentity => ArchiveError::Key(format!(
                    "{object} is encrypted for other recipients than the identities given"
                )),
                e => corrupt(e.to_string()),
            })?;
            let mut opener = super::age::Opener::new(&key);
            let mut plain = opener
                .push(&stored[at..])
                .map_err(|e| corrupt(e.to_string()))?;
            plain.extend(opener.finish().map_err(|e| corrupt(e.to_string()))?);
            std::borrow::Cow::Owned(plain)
        }
        other => return Err(corrupt(format!("unknown encoding {other:?}"))),
    };
    let mut out = Vec::new();
    let mut decoder = zstd::stream::read::Decoder::new(&compressed[..])
        .map_err(|e| ArchiveError::Compression(e.to_string()))?;
    use std::io::Read;
    (&mut decoder)
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(format!("does not decompress: {e}")))?;
    if out.len() as u64 > max {
        return Err(corrupt(format!("decompresses past {max} bytes")));
    }
    Ok(out)
}

/// Where an age file's header ends (after its `--- <mac>` line).
fn header_end(stored: &[u8]) -> Option<usize> {
    let head = &stored[..stored.len().min(64 << 10)];
    let mac = head.windows(4).position(|w| w == b"\n---")? + 1;
    let nl = head[mac..].iter().position(|b| *b == b'\n')?;
    Some(mac + nl + 1)
}

/// Stores one segment (or a partial one, or a history file): the object,
/// then its record, signed when the store has a signing key. `record`'s
/// size, checksum and encoding are filled in here.
pub async fn put(
    store: &Store,
    object: &str,
    data: &[u8],
    level: i32,
    mut record: SegmentRecord,
) -> Result<SegmentRecord, ArchiveError> {
    let (stored, encoding) = encode(data, level, &store.keys().recipients)?;
    record.size = stored.len() as u64;
    record.sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&stored));
    record.encoding = encoding.into();
    record.signature = None;
    store.put(object, stored).await?;
    let body = serde_json::to_vec_pretty(&record).expect("a record serializes");
    let bytes = super::signed::to_bytes(body, |b| store.keys().sign(b));
    store.put(&format!("{object}.json"), bytes).await?;
    Ok(record)
}

/// A record as stored, its signature checked when the store's keys trust
/// any signer.
pub async fn read_record(store: &Store, object: &str) -> Result<SegmentRecord, ArchiveError> {
    let path = format!("{object}.json");
    let bytes = store.get(&path).await?;
    let record: SegmentRecord =
        serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Corrupt {
            object: path.clone(),
            reason: format!("not a WAL record: {e}"),
        })?;
    if record.format != SEGMENT_FORMAT {
        return Err(ArchiveError::Corrupt {
            object: path,
            reason: format!("format {:?}, expected {SEGMENT_FORMAT}", record.format),
        });
    }
    super::signed::check(store.keys(), &bytes, record.signature.as_ref()).map_err(|p| {
        ArchiveError::Signature {
            object: path.clone(),
            reason: p.explain("WAL record"),
        }
    })?;
    Ok(record)
}

/// The bytes of a stored segment or history file: its record read (and its
/// signature checked), the object's size and sha256 checked against it, and
/// only then decrypted and decompressed; at most `max` bytes.
pub async fn get(
    store: &Store,
    object: &str,
    max: u64,
) -> Result<(SegmentRecord, Vec<u8>), ArchiveError> {
    let record = read_record(store, object).await?;
    let stored = store.get(object).await?;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&stored));
    if stored.len() as u64 != record.size || sha != record.sha256 {
        return Err(ArchiveError::Corrupt {
            object: object.to_string(),
            reason: format!(
                "{} bytes with sha256 {sha}, but its record says {} bytes with sha256 {}",
                stored.len(),
                record.size,
                record.sha256
            ),
        });
    }
    let data = decode(object, &stored, &record, &store.keys().identities, max)?;
    Ok((record, data))
}

/// What the first page of a segment says about itself, checked against
/// where it is supposed to come from: a segment of another cluster, another
/// position or another segment size is never replayed.
pub fn check_segment_header(
    data: &[u8],
    expect_start: Lsn,
    system_id: &str,
    segment_size: u64,
) -> Result<(), String> {
    // XLogLongPageHeaderData: magic u16, info u16, tli u32, pageaddr u64,
    // rem_len u32, (pad) sysid u64, seg_size u32, xlog_blcksz u32.
    if data.len() < 40 {
        return Err(format!(
            "{} bytes: shorter than a WAL page header",
            data.len()
        ));
    }
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap());
    let info = u16::from_le_bytes([data[2], data[3]]);
    const XLP_LONG_HEADER: u16 = 0x0002;
    if info & XLP_LONG_HEADER == 0 {
        return Err("its first page has no long header: not the start of a WAL segment".into());
    }
    let pageaddr = u64_at(8);
    if pageaddr != expect_start.0 {
        return Err(format!(
            "it starts at {} where {} was expected",
            Lsn(pageaddr),
            expect_start
        ));
    }
    let sysid = u64_at(24).to_string();
    if sysid != system_id {
        return Err(format!(
            "it belongs to database system {sysid}, not {system_id}"
        ));
    }
    if u64::from(u32_at(32)) != segment_size {
        return Err(format!(
            "its segment size is {}, not {segment_size}",
            u32_at(32)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_as_postgres_prints_it() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        for bad in ["", "16", "/1", "1/", "x/1", "123456789/0", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn segment_names_match_postgres() {
        let size = DEFAULT_SEGMENT_SIZE;
        // 0/3000028 on timeline 1 lies in 000000010000000000000003.
        let seg = Segment::of(1, "0/3000028".parse().unwrap(), size);
        assert_eq!(seg.file_name(size), "000000010000000000000003");
        let high = Segment::of(2, "1/FF000000".parse().unwrap(), size);
        assert_eq!(high.file_name(size), "0000000200000001000000FF");
        assert_eq!(high.next().file_name(size), "000000020000000200000000");
        assert_eq!(Segment::parse("0000000200000001000000FF", size), Some(high));
        // 1 GiB segments: four per xlogid.
        let g = 1 << 30;
        assert_eq!(Segment::parse("000000010000000000000004", g), None);
        assert_eq!(Segment::parse("../../etc/passwd0000000", size), None);
        assert_eq!(Segment::parse("000000000000000000000001", size), None);
        assert_eq!(parse_history_name("00000002.history"), Some(2));
        assert_eq!(parse_history_name("0000002.history"), None);
        assert!(check_segment_size(16 << 20).is_ok());
        assert!(check_segment_size(3 << 20).is_err());
    }
}
