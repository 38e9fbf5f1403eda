//! When a job runs: every interval (`"1h"`, `"3600"` seconds as the backup
//! templates write it) or on a cron expression (`"cron: 0 3 * * *"`, five
//! fields, UTC).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    Cron(Cron),
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        if let Some(expr) = s.strip_prefix("cron:") {
            return Cron::parse(expr.trim()).map(Schedule::Cron);
        }
        let d = match s.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => humantime::parse_duration(s).map_err(|_| {
                format!(
                    "{s:?} is neither an interval (1h, 30m, 3600) nor \"cron: m h dom mon dow\""
                )
            })?,
        };
        if d.is_zero() {
            return Err("an interval must be more than zero".into());
        }
        Ok(Schedule::Every(d))
    }

    /// Seconds from `now` (unix seconds) to the next run.
    /// The slot `now` falls in: its start. Intervals are aligned to the
    /// epoch, so every agent of a fleet names the same slot; a cron slot is
    /// its minute.
    pub fn slot_of(&self, now: i64) -> i64 {
        match self {
            Schedule::Every(d) => {
                let d = d.as_secs().max(1) as i64;
                now - now.rem_euclid(d)
            }
            Schedule::Cron(_) => now - now.rem_euclid(60),
        }
    }

    /// Whether a run of this schedule starts in the minute from `t` (unix
    /// seconds), `[t, t + 60)`: how an incremental backup's slot learns
    /// that the full backups' schedule takes it (both would run under the
    /// same (job, source, slot) lease).
    pub fn fires_in_minute_from(&self, t: i64) -> bool {
        self.fires_between(t, t + 60)
    }

    /// Whether a run of this schedule starts in `[from, to)` (unix seconds;
    /// meant for windows of a minute or so: a cron is tried minute by minute).
    pub fn fires_between(&self, from: i64, to: i64) -> bool {
        // The first slot start at or after `from`: slots are the multiples
        // of an interval, or the minutes a cron matches.
        match self {
            Schedule::Every(d) => {
                let d = d.as_secs().max(1) as i64;
                from + (-from).rem_euclid(d) < to
            }
            Schedule::Cron(c) => {
                let mut minute = from + (-from).rem_euclid(60);
                while minute < to {
                    if c.matches(minute) {
                        return true;
                    }
                    minute += 60;
                }
                false
            }
        }
    }

    /// How long one slot lasts, at most a minute: the window in which
    /// another schedule's run counts as this slot's (a cron slot is its
    /// minute; an interval shorter than that is its own).
    pub fn slot_window(&self) -> i64 {
        match self {
            Schedule::Every(d) => (d.as_secs() as i64).clamp(1, 60),
            Schedule::Cron(_) => 60,
        }
    }

    /// The longest wait between two runs from `from` (unix seconds) on: an
    /// interval's length; for a cron, its longest gap over the coming year
    /// (weekdays only: the weekend; monthly: the longest month), or the wait
    /// for its first run if that is longer. What the alert rules measure a
    /// run's lateness against (`firedrill.schedule.interval`).
    pub fn longest_gap(&self, from: i64) -> Duration {
        match self {
            Schedule::Every(d) => *d,
            Schedule::Cron(c) => {
                let horizon = from + 366 * 86_400;
                let mut at = c.next_after(from);
                let mut longest = at - from;
                // A cron that runs every minute would take half a million
                // steps for the year; 20 000 runs cover its weekly and
                // monthly patterns too (it then runs more than 50 a day).
                let mut runs = 0;
                while at < horizon && runs < 20_000 {
                    runs += 1;
                    let next = c.next_after(at);
                    longest = longest.max(next - at);
                    at = next;
                }
                Duration::from_secs(longest.max(60) as u64)
            }
        }
    }

    /// How long from `now` until the next slot starts.
    pub fn wait_from(&self, now: i64) -> Duration {
        match self {
            Schedule::Every(d) => {
                let secs = d.as_secs().max(1) as i64;
                Duration::from_secs((secs - now.rem_euclid(secs)) as u64)
            }
            Schedule::Cron(c) => {
                Duration::from_secs(c.next_after(now).saturating_sub(now).max(1) as u64)
            }
        }
    }
}

/// A five-field cron expression: minute, hour, day of month, month, day of
/// week (0 or 7 = Sunday). Each field: `*`, numbers, `a-b`, lists, `/step`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    fields: [Vec<bool>; 5],
    /// Day of month and day of week both restricted: either may match (as cron does).
    dom_or_dow: bool,
}

const RANGES: [(u32, u32); 5] = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
const NAMES: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let parts: Vec<&str> = expr.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "cron {expr:?}: five fields (minute hour day-of-month month day-of-week), found {}",
                parts.len()
            ));
        }
        let mut fields: [Vec<bool>; 5] = Default::default();
        for (i, part) in parts.iter().enumerate() {
            let (lo, hi) = RANGES[i];
            let mut set = vec![false; hi as usize + 1];
            for item in part.split(',') {
                let (range, step) = match item.split_once('/') {
                    Some((r, s)) => (
                        r,
                        s.parse::<u32>()
                            .ok()
                            .filter(|s| *s > 0)
                            .ok_or_else(|| format!("cron {}: bad step in {item:?}", NAMES[i]))?,
                    ),
                    None => (item, 1),
                };
                let (a, b) = if range == "*" {
                    (lo, hi)
                } else if let Some((a, b)) = range.split_once('-') {
                    (num(a, i)?, num(b, i)?)
                } else {
                    let a = num(range, i)?;
                    (a, if item.contains('/') { hi } else { a })
                };
                if a < lo || b > hi || a > b {
                    return Err(format!("cron {}: {item:?} is outside {lo}-{hi}", NAMES[i]));
                }
                for v in (a..=b).step_by(step as usize) {
                    set[v as usize] = true;
                }
            }
            fields[i] = set;
        }
        if fields[4][7] {
            fields[4][0] = true;
        }
        let dom_or_dow = parts[2] != "*" && parts[4] != "*";
        Ok(Cron { fields, dom_or_dow })
    }

    fn matches(&self, unix: i64) -> bool {
        let days = unix.div_euclid(86_400);
        let secs = unix.rem_euclid(86_400);
        let (_, month, day) = civil(days);
        let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
        let minute = (secs / 60 % 60) as usize;
        let hour = (secs / 3600) as usize;
        let dom = self.fields[2][day as usize];
        let dow = self.fields[4][weekday];
        let day_ok = if self.dom_or_dow {
            dom || dow
        } else {
            dom && dow
        };
        self.fields[0][minute] && self.fields[1][hour] && self.fields[3][month as usize] && day_ok
    }

    /// The first matching minute strictly after `now` (within ~4 years).
    pub fn next_after(&self, now: i64) -> i64 {
        let mut t = (now.div_euclid(60) + 1) * 60;
        for _ in 0..(4 * 366 * 24 * 60) {
            if self.matches(t) {
                return t;
            }
            t += 60;
        }
        i64::MAX / 2
    }
}

fn num(s: &str, field: usize) -> Result<u32, String> {
    s.parse()
        .map_err(|_| format!("cron {}: {s:?} is not a number", NAMES[field]))
}

/// (year, month, day) of a day count since 1970-01-01.
pub(crate) fn civil(days: i64) -> (i64, u32, u32) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22 21:00:00 UTC, a Sunday.
    const T: i64 = 1_795_381_200;

    #[test]
    fn intervals_in_both_spellings() {
        assert_eq!(
            Schedule::parse("3600").unwrap(),
            Schedule::Every(Duration::from_secs(3600))
        );
        assert_eq!(
            Schedule::parse("90m").unwrap(),
            Schedule::Every(Duration::from_secs(5400))
        );
        assert!(Schedule::parse("0").is_err());
        assert!(Schedule::parse("often").unwrap_err().contains("cron"));
    }

    #[test]
    fn every_agent_of_a_fleet_names_the_same_slot() {
        let hourly = Schedule::parse("1h").unwrap();
        // Agents waking at different seconds of the same hour agree on its slot.
        assert_eq!(hourly.slot_of(T + 5), T);
        assert_eq!(hourly.slot_of(T + 3599), T);
        assert_eq!(hourly.slot_of(T + 3600), T + 3600);
        assert_eq!(hourly.wait_from(T + 600), Duration::from_secs(3000));
        let cron = Schedule::parse("cron: */15 * * * *").unwrap();
        assert_eq!(cron.slot_of(T + 59), T);
    }

    #[test]
    fn the_longest_gap_is_the_interval_or_the_crons_widest() {
        let gap = |s: &str| Schedule::parse(s).unwrap().longest_gap(T).as_secs();
        assert_eq!(gap("90m"), 5400);
        assert_eq!(gap("cron: */15 * * * *"), 900);
        assert_eq!(gap("cron: 0 3 * * *"), 86_400);
        // Weekdays at 03:00: Friday to Monday.
        assert_eq!(gap("cron: 0 3 * * 1-5"), 3 * 86_400);
        // The first of each month: the longest month.
        assert_eq!(gap("cron: 0 3 1 * *"), 31 * 86_400);
    }

    #[test]
    fn a_full_schedule_tells_which_incremental_slots_it_takes() {
        // Weekly full on Sunday 03:00, daily incremental at 03:00.
        let full = Schedule::parse("cron: 0 3 * * 0").unwrap();
        let monday_3am = T + 6 * 3600; // 2026-11-23
        let sunday_3am = monday_3am + 6 * 86_400; // 2026-11-29
        assert!(full.fires_in_minute_from(sunday_3am));
        assert!(!full.fires_in_minute_from(monday_3am));
        assert!(!full.fires_in_minute_from(sunday_3am + 60));
        assert!(!full.fires_in_minute_from(sunday_3am + 1));
        // The minute from any second of the minute before holds 03:00.
        assert!(full.fires_in_minute_from(sunday_3am - 59));
        assert!(!full.fires_in_minute_from(sunday_3am - 60));
        // Intervals: slots at the multiples of the interval since the epoch.
        let daily = Schedule::parse("1d").unwrap();
        let midnight = T + 3 * 3600; // 2026-11-23 00:00
        assert!(daily.fires_in_minute_from(midnight));
        assert!(daily.fires_in_minute_from(midnight - 30));
        assert!(!daily.fires_in_minute_from(midnight + 1));
        assert!(!daily.fires_in_minute_from(midnight - 60));
        assert!(!daily.fires_in_minute_from(midnight + 3600));
        // An interval under a minute fires in every minute, but not in
        // every window shorter than itself.
        let often = Schedule::parse("30s").unwrap();
        assert!(often.fires_in_minute_from(T + 17));
        assert!(often.fires_between(T + 17, T + 31) && !often.fires_between(T + 1, T + 30));
        assert_eq!(often.slot_window(), 30);
        assert_eq!(daily.slot_window(), 60);
        assert_eq!(full.slot_window(), 60);
        // A cron window of several minutes is tried minute by minute.
        assert!(full.fires_between(sunday_3am - 600, sunday_3am + 1));
        assert!(!full.fires_between(sunday_3am - 600, sunday_3am));
        // The hourly slots of an incremental: only midnight's is the full's.
        let hourly = Schedule::parse("1h").unwrap();
        let taken: Vec<i64> = (0..48)
            .map(|h| hourly.slot_of(midnight - 86_400 + h * 3600 + 5))
            .filter(|s| daily.fires_in_minute_from(*s))
            .collect();
        assert_eq!(taken, vec![midnight - 86_400, midnight]);
    }

    #[test]
    fn cron_finds_the_next_minute() {
        let daily = Cron::parse("0 3 * * *").unwrap();
        assert_eq!(daily.next_after(T), T + 6 * 3600); // 03:00 the next day
        let quarter = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(quarter.next_after(T), T + 15 * 60);
        let monday = Cron::parse("30 2 * * 1").unwrap();
        assert_eq!(monday.next_after(T), T + 5 * 3600 + 30 * 60);
        let sunday7 = Cron::parse("0 22 * * 7").unwrap();
        assert_eq!(sunday7.next_after(T), T + 3600);
        assert!(Cron::parse("0 3 * *").unwrap_err().contains("five fields"));
        assert!(Cron::parse("61 * * * *").unwrap_err().contains("minute"));
        assert_eq!(
            Schedule::parse("cron: 0 3 * * *").unwrap().wait_from(T),
            Duration::from_secs(6 * 3600)
        );
    }
}
