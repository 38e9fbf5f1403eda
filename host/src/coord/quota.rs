//! The fleet-wide quota of concurrent drills: a sorted set of holders scored
//! by when their claim runs out (Redis server time), so a crashed holder's
//! place frees itself after one lease.

use super::{Backend, CoordError, Coordinator};
use std::time::Duration;

const CLAIM: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

/// A place in the drill quota, kept while the drill runs.
pub struct Permit {
    coord: Coordinator,
    member: String,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Coordinator {
    /// Takes a place in the drill quota, or none when the fleet is at it.
    pub async fn try_drill_permit(&self) -> Result<Option<Permit>, CoordError> {
        let member = format!("{}/{:08x}", self.inner.opts.node, rand::random::<u32>());
        let got = match &self.inner.backend {
            Backend::Redis(_) => self.claim(&member).await?,
            Backend::Local(l) => {
                let mut s = l.state.lock().unwrap();
                let free = s.drills.len() < self.inner.opts.drill_quota;
                if free {
                    s.drills.push(member.clone());
                }
                free
            }
        };
        if !got {
            return Ok(None);
        }
        let renewer = self.is_fleet().then(|| {
            let (coord, member) = (self.clone(), member.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(coord.inner.opts.lease / 3).await;
                    if let Err(e) = coord.claim(&member).await {
                        tracing::warn!("drill quota renewal failed: {e}");
                    }
                }
            })
        });
        Ok(Some(Permit {
            coord: self.clone(),
            member,
            renewer,
        }))
    }

    /// Waits for a place in the drill quota, polling, up to `give_up`.
    pub async fn drill_permit(&self, give_up: Duration) -> Result<Option<Permit>, CoordError> {
        let until = tokio::time::Instant::now() + give_up;
        loop {
            if let Some(p) = self.try_drill_permit().await? {
                return Ok(Some(p));
            }
            if tokio::time::Instant::now() >= until {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn claim(&self, member: &str) -> Result<bool, CoordError> {
        let Backend::Redis(r) = &self.inner.backend else {
            return Ok(true);
        };
        let mut conn = r.conn.clone();
        let got: i64 = redis::Script::new(CLAIM)
            .key(self.key(&["drills"]))
            .arg(self.inner.opts.lease.as_millis() as u64)
            .arg(member)
            .arg(self.inner.opts.drill_quota)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| r.error(e))?;
        Ok(got == 1)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(t) = self.renewer.take() {
            t.abort();
        }
        match &self.coord.inner.backend {
            Backend::Local(l) => l.state.lock().unwrap().drills.retain(|m| *m != self.member),
            Backend::Redis(r) => {
                // Give the place back now rather than after the lease runs out.
                let (mut conn, key, member) = (
                    r.conn.clone(),
                    self.coord.key(&["drills"]),
                    self.member.clone(),
                );
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _: Result<i64, _> = redis::cmd("ZREM")
                            .arg(key)
                            .arg(member)
                            .query_async(&mut conn)
                            .await;
                    });
                }
            }
        }
    }
}
