//! Built-in verifier for Redis drills, through the keyvalue grant on the
//! drill instance (and nothing else).
//!
//! Config:
//! - `keys`: comma-separated keys that must exist (`keys.<key>` checks).
//! - `counts`: comma-separated `prefix>=N` (`count.<prefix>` checks): at
//!   least N keys start with the prefix. The grant's prefixes must cover
//!   every key and prefix named here.

use firedrill_plugin_sdk::verifier::wasi::keyvalue::store;
use firedrill_plugin_sdk::verifier::{
    export, CheckResult, CheckStatus, Config, DrillContext, Guest,
};

struct Keys;

fn check(name: String, ok: bool, detail: String) -> CheckResult {
    CheckResult {
        name,
        status: if ok {
            CheckStatus::Pass
        } else {
            CheckStatus::Fail
        },
        detail,
    }
}

fn list(key: &str) -> Vec<String> {
    Config::get(key)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Keys of the granted prefixes, page by page.
fn all_keys(bucket: &store::Bucket) -> Result<Vec<String>, store::Error> {
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = bucket.list_keys(cursor)?;
        keys.extend(page.keys);
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(keys),
        }
    }
}

impl Guest for Keys {
    fn verify(_ctx: DrillContext) -> Vec<CheckResult> {
        let bucket = match store::open("") {
            Ok(b) => b,
            Err(e) => {
                return vec![check(
                    "keys".into(),
                    false,
                    format!("no key-value access to the drill instance: {e:?}"),
                )]
            }
        };
        let mut out = Vec::new();
        for key in list("keys") {
            out.push(match bucket.exists(&key) {
                Ok(found) => check(
                    format!("keys.{key}"),
                    found,
                    if found {
                        "present".into()
                    } else {
                        "missing".into()
                    },
                ),
                Err(e) => check(format!("keys.{key}"), false, format!("{e:?}")),
            });
        }
        let counts = list("counts");
        if !counts.is_empty() {
            let keys = match all_keys(&bucket) {
                Ok(k) => k,
                Err(e) => {
                    return vec![check(
                        "count".into(),
                        false,
                        format!("cannot list keys: {e:?}"),
                    )]
                }
            };
            for spec in counts {
                let Some((prefix, min)) = spec
                    .split_once(">=")
                    .and_then(|(p, n)| Some((p.trim(), n.trim().parse::<usize>().ok()?)))
                else {
                    out.push(check(
                        format!("count.{spec}"),
                        false,
                        format!("config `counts`: {spec:?} is not prefix>=N"),
                    ));
                    continue;
                };
                let n = keys.iter().filter(|k| k.starts_with(prefix)).count();
                out.push(check(
                    format!("count.{prefix}"),
                    n >= min,
                    format!("{n} keys start with {prefix:?} (at least {min} expected)"),
                ));
            }
        }
        out
    }
}

export!(Keys);
