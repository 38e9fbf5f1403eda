//! The WAL archive of physical sources: continuous archiving over the
//! replication protocol (`stream`), WAL handed back to a recovering server
//! (`fetch`), the `archive_command` route into the same archive (`push`),
//! and the check that the archive is whole (`verify`). The
//! layout and the object format are `archive::wal`'s.

pub mod fetch;
pub mod prune;
pub mod push;
pub mod stream;
pub mod verify;

/// The physical replication slot a source streams from, unless configured:
/// one per source name (slot names allow `[a-z0-9_]`, 63 bytes).
pub fn default_slot(source: &str) -> String {
    let mut s: String = source
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(50);
    format!("firedrill_{s}")
}
