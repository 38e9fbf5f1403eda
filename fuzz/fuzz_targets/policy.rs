//! Policy files, as the agent reads them from its policies directory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = firedrill::runtime::Policy::parse(
            std::path::Path::new("/policies/fuzz.toml"),
            text,
            |_| Some("from-env".into()),
        );
    }
});
