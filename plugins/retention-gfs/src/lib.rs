//! Built-in retention: grandfather-father-son. Per source, keep the newest
//! complete backup of each of the last `daily` days, `weekly` weeks (Monday
//! to Sunday), `monthly` months and `yearly` years that have backups (UTC);
//! delete the rest. Config: daily 7, weekly 4, monthly 12, yearly 0 by
//! default. The host still guards every plan.

use firedrill_plugin_sdk::retention::{
    export, Action, BackupInfo, Config, Guest, RetentionDecision, Timestamp,
};
use std::collections::{BTreeMap, HashMap};

struct Gfs;

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn periods(created: Timestamp) -> [(&'static str, String); 4] {
    let days = created.div_euclid(86_400);
    let (y, m, d) = civil(days);
    // 1970-01-01 was a Thursday: weeks start on the Monday before it.
    let monday = days - (days + 3).rem_euclid(7);
    let (wy, wm, wd) = civil(monday);
    [
        ("daily", format!("{y:04}-{m:02}-{d:02}")),
        ("weekly", format!("week of {wy:04}-{wm:02}-{wd:02}")),
        ("monthly", format!("{y:04}-{m:02}")),
        ("yearly", format!("{y:04}")),
    ]
}

impl Guest for Gfs {
    fn plan(backups: Vec<BackupInfo>, _now: Timestamp) -> Vec<RetentionDecision> {
        let mut limits = HashMap::new();
        for (rule, default) in [
            ("daily", 7usize),
            ("weekly", 4),
            ("monthly", 12),
            ("yearly", 0),
        ] {
            match Config::parse_or(rule, default) {
                Ok(n) => limits.insert(rule, n),
                Err(e) => {
                    return backups
                        .into_iter()
                        .map(|b| RetentionDecision {
                            id: b.id,
                            action: Action::Keep,
                            reason: format!("{e}; keeping everything"),
                        })
                        .collect()
                }
            };
        }
        // Newest first, per source.
        let mut by_source: BTreeMap<&str, Vec<&BackupInfo>> = BTreeMap::new();
        for b in backups.iter().filter(|b| b.complete) {
            by_source.entry(&b.source).or_default().push(b);
        }
        let mut kept: HashMap<&str, Vec<String>> = HashMap::new();
        for list in by_source.values_mut() {
            list.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
            for (i, rule) in ["daily", "weekly", "monthly", "yearly"]
                .into_iter()
                .enumerate()
            {
                let mut seen: Vec<String> = Vec::new();
                for b in list.iter() {
                    let period = periods(b.created)[i].1.clone();
                    if seen.contains(&period) {
                        continue;
                    }
                    if seen.len() == limits[rule] {
                        break;
                    }
                    seen.push(period.clone());
                    kept.entry(&b.id)
                        .or_default()
                        .push(format!("{rule} {period}"));
                }
            }
        }
        backups
            .iter()
            .map(|b| {
                let (action, reason) = if !b.complete {
                    (
                        Action::Keep,
                        "incomplete: not for retention to decide".to_string(),
                    )
                } else if let Some(why) = kept.get(b.id.as_str()) {
                    (Action::Keep, format!("newest of {}", why.join(", ")))
                } else {
                    (
                        Action::Delete,
                        "not the newest of any kept day, week, month or year".to_string(),
                    )
                };
                RetentionDecision {
                    id: b.id.clone(),
                    action,
                    reason,
                }
            })
            .collect()
    }
}

export!(Gfs);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_779), (2026, 11, 22));
        assert_eq!(civil(-1), (1969, 12, 31));
        // 2026-11-22 is a Sunday: its week began on Monday the 16th.
        assert_eq!(periods(20_779 * 86_400)[1].1, "week of 2026-11-16");
        assert_eq!(periods(20_780 * 86_400)[1].1, "week of 2026-11-23");
    }
}
