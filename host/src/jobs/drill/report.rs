//! The drill report: what a drill found ([`Check`]s, each with a
//! [`Status`]), the restored row counts, RTO and RPO, and how it is stored
//! (`drills/<timestamp>.json` next to the backup, signed as a manifest is).
//!
//! Invariants: everything a check or the error quotes (a verifier's output,
//! a server's message) leaves through the redactor before it is stored; a
//! stored report carries its signature last, over every other member.

use crate::archive::manifest::{self, Manifest};
use crate::archive::{self as arch, Store};
use serde::{Deserialize, Serialize};

pub const REPORT_FORMAT: &str = "firedrill-drill/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// "built-in", "assertions", or the plugin's name.
    pub by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pass,
    Fail,
    Warn,
    Skip,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableCount {
    pub schema: String,
    pub name: String,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrilledDatabase {
    pub name: String,
    pub drill_database: String,
    pub restore_seconds: f64,
    pub tables: Vec<TableCount>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhysicalDrill {
    /// The moment recovery was asked to stop at (none: the archive's end).
    pub target_time: Option<String>,
    pub reached_lsn: String,
    pub reached_time: Option<String>,
    pub timeline: u32,
    /// RTO, split: the base backup unpacked and checked, then WAL replayed.
    pub unpack_seconds: f64,
    pub replay_seconds: f64,
    pub wal_bytes_replayed: u64,
    /// Seconds since the newest WAL was archived when the drill started
    /// (the real RPO of a physical source).
    pub archive_lag_seconds: Option<i64>,
    /// An incremental backup: the chain combined, the full backup first,
    /// with the bytes each member stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<crate::jobs::restore::combine::ChainMember>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    pub format: String,
    pub backup_id: String,
    pub source: String,
    /// Seconds since the epoch.
    pub started: i64,
    pub finished: i64,
    pub passed: bool,
    /// Recovery time: how long the restore took, all databases.
    pub rto_seconds: f64,
    /// Recovery point: the backup's age when the drill started.
    pub rpo_seconds: i64,
    pub backup_bytes: u64,
    pub backup_rows: u64,
    /// "local" or the drill server, without credentials.
    pub target: String,
    pub databases: Vec<DrilledDatabase>,
    pub checks: Vec<Check>,
    pub plugins: Vec<String>,
    /// Why the drill could not run to the end, if it could not.
    pub error: Option<String>,
    /// Where the report is stored, relative to the store's root.
    #[serde(default)]
    pub report: String,
    /// A physical backup's drill: the moment asked for and reached, the
    /// restore time split, the WAL replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalDrill>,
    /// Always last: the manifest's signature scheme
    /// ([`crate::archive::signed`]), by the store's signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<manifest::Signature>,
}

impl DrillReport {
    /// The report as stored: pretty JSON, signed as a manifest is
    /// ([`manifest::Manifest::to_bytes`]) when `keys` hold a signing key.
    pub fn to_bytes(&self, keys: &arch::Keys) -> Vec<u8> {
        let mut r = self.clone();
        r.signature = None;
        let body = serde_json::to_vec_pretty(&r).expect("a report serializes");
        arch::signed::to_bytes(body, |b| keys.sign(b))
    }

    pub fn failed_checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }
}

/// Check names and details and the error can quote anything (a verifier's
/// output, a server's message): they leave through the redactor, in one batch.
pub(super) fn redact_report(report: &mut DrillReport) {
    let mut texts: Vec<String> = report
        .checks
        .iter()
        .flat_map(|c| [c.name.clone(), c.detail.clone()])
        .collect();
    texts.push(report.error.clone().unwrap_or_default());
    let mut out = crate::telemetry::redactor().redact_lines(texts).into_iter();
    for c in &mut report.checks {
        c.name = out.next().unwrap_or_default();
        c.detail = out.next().unwrap_or_default();
    }
    if report.error.is_some() {
        report.error = out.next();
    }
}

pub(super) fn compact_time(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// The newest drill report of an earlier backup of the same source.
pub(super) async fn previous_drill(store: &Store, m: &Manifest) -> Option<DrillReport> {
    let all = arch::list_backups(store).await.ok()?;
    for l in all
        .iter()
        .rev()
        .filter(|l| l.source == m.source && l.id < m.id && l.last_drill.is_some())
    {
        if let Some(r) = arch::last_drill_report(store, &l.source, &l.id).await {
            return serde_json::from_slice(&r).ok();
        }
    }
    None
}

pub(in crate::jobs) fn pass(name: &str, detail: String) -> Check {
    Check {
        name: name.into(),
        status: Status::Pass,
        detail,
        by: "built-in".into(),
    }
}

pub(in crate::jobs) fn verdict(name: String, ok: bool, detail: String) -> Check {
    Check {
        name,
        status: if ok { Status::Pass } else { Status::Fail },
        detail,
        by: "built-in".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_signed_like_manifests_and_tampering_shows() {
        use crate::archive::{check_report, signed::Problem, Keys};
        let keys = |seed: [u8; 32]| {
            let k = ed25519_dalek::SigningKey::from_bytes(&seed);
            Keys {
                trusted: vec![k.verifying_key()],
                signing: Some(k),
                ..Default::default()
            }
        };
        let (ours, stranger) = (keys([7; 32]), keys([9; 32]));
        let reader = Keys {
            trusted: ours.trusted.clone(),
            ..Default::default()
        };
        let (src, id) = ("app", "20261122T210000Z-k3x9qa");
        let report = DrillReport {
            format: REPORT_FORMAT.into(),
            backup_id: id.into(),
            source: src.into(),
            started: 1,
            finished: 2,
            passed: false,
            rto_seconds: 1.5,
            rpo_seconds: 60,
            backup_bytes: 10,
            backup_rows: 3,
            target: "local".into(),
            databases: vec![],
            checks: vec![pass("tables", "3 tables, each present".into())],
            plugins: vec![],
            error: Some("row count of public.t: 3, 4 at the backup".into()),
            report: format!("{src}/{id}/drills/19700101T000001Z.json"),
            physical: None,
            signature: None,
        };
        let stored = report.to_bytes(&ours);
        let back: DrillReport = serde_json::from_slice(&stored).unwrap();
        assert_eq!(back.signature.as_ref().unwrap().algorithm, "ed25519");
        assert_eq!(back.to_bytes(&ours), stored, "signing is deterministic");
        let signer = crate::archive::keys::key_id(&ours.trusted[0]);
        assert_eq!(check_report(&reader, &stored, src, id), Ok(Some(signer)));
        // Without trusted keys nothing is checked.
        assert_eq!(check_report(&Keys::default(), &stored, src, id), Ok(None));

        // Failed turned into passed.
        let text = String::from_utf8(stored.clone()).unwrap();
        let forged = text.replacen("\"passed\": false", "\"passed\": true", 1);
        assert_ne!(forged, text);
        assert!(matches!(
            check_report(&reader, forged.as_bytes(), src, id),
            Err(Problem::Bad(r)) if r.contains("modified after it was signed")
        ));
        // The signature cut off.
        let unsigned = report.to_bytes(&Keys::default());
        assert_eq!(
            check_report(&reader, &unsigned, src, id),
            Err(Problem::Unsigned)
        );
        // Signed, by a key the reader does not trust.
        assert!(matches!(
            check_report(&reader, &report.to_bytes(&stranger), src, id),
            Err(Problem::Untrusted(_))
        ));
        // A member appended after the signature.
        let appended = format!("{}, \"passed\": true}}", text.trim_end_matches('}'));
        assert!(matches!(
            check_report(&reader, appended.as_bytes(), src, id),
            Err(Problem::Bad(_))
        ));
        // A genuine report copied next to another backup vouches for nothing there.
        assert!(matches!(
            check_report(&reader, &stored, src, "20261123T210000Z-aaaaaa"),
            Err(Problem::Unreadable(r)) if r.contains("not the backup it is stored with")
        ));
        assert!(matches!(
            check_report(&reader, b"not json", src, id),
            Err(Problem::Unreadable(_))
        ));
    }
}
