//! The agent's configuration: TOML text plus environment overrides.
//! Input: `NAME=value` lines, a `---` line, then the file's text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (env, file) = text.split_once("\n---\n").unwrap_or(("", text));
    let env: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let _ = firedrill::config::Config::parse("fuzz.toml", file, |k| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    });
});
