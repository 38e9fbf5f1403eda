//! Backup manifests as read from a store: parsed, checked, walked, and the
//! signed part cut out as signature checks do.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let id = "20261122T210000Z-abc123";
    if let Ok(m) = firedrill::archive::parse_manifest("app/x/manifest.json", data, "app", id) {
        let _ = m.unsigned_part(data);
        let _ = (m.size(), m.rows(), m.raw_bytes(), m.keys(), m.table_count());
        for o in m.objects() {
            let _ = firedrill::archive::manifest::path_segment(&o.path);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = firedrill::archive::manifest::id_time(text);
    }
});
