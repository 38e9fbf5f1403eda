//! `wasi:keyvalue/store` and `wasi:keyvalue/atomics` on Redis, scoped to key
//! prefixes.
//!
//! Grant: `keyvalue = { prefixes = ["ratelimit:", "revoked:"], expire = "10m" }`,
//! and optionally `max_bytes` (default 4MiB): a larger value is refused by
//! `get` before it is read.
//! With `expire`, every key the plugin writes (set, increment) expires that
//! long after it was first written, so counters cannot pile up. The plugin
//! opens the bucket `""` (or `"default"`); every key it touches must start
//! with a granted prefix, or the call answers `access-denied`. In Redis the
//! key lives under the agent's namespace (`firedrill:` unless configured), so
//! plugins never see or touch the agent's own keys.

use super::bindings::wasi::keyvalue::atomics;
use super::bindings::wasi::keyvalue::store::{self, Error, KeyResponse};
use super::{Call, CapState, Capability};
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

/// The most keys one `list-keys` page returns.
const PAGE: usize = 1000;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyvalueGrant {
    pub prefixes: Vec<String>,
    /// How long written keys live, e.g. "10m"; none keeps them.
    #[serde(default)]
    pub expire: Option<String>,
    /// The largest value `get` returns, e.g. "1MiB".
    #[serde(default)]
    pub max_bytes: Option<String>,
}

/// The largest value `get` returns unless the grant says.
const MAX_BYTES: u64 = 4 << 20;

/// GET, but only a value no longer than ARGV[1]; else its length (an
/// integer), so that a huge value is never sent to the host.
const GET_BOUNDED: &str = "local n = redis.call('STRLEN', KEYS[1]) if n > tonumber(ARGV[1]) then return n end return redis.call('GET', KEYS[1])";

/// INCRBY, and an expiry on a key that has none (one round trip, atomic).
const INCREMENT_EXPIRING: &str = "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return v";

impl KeyvalueGrant {
    /// A problem with the grant itself, for the policy loader.
    pub fn problem(&self) -> Option<String> {
        if self.prefixes.is_empty() {
            return Some("`prefixes` is empty: grant at least one key prefix".into());
        }
        if let Some(e) = &self.expire {
            if humantime::parse_duration(e).map_or(true, |d| d.as_millis() == 0) {
                return Some(format!("`expire` {e:?} is not a duration (e.g. 10m)"));
            }
        }
        if let Some(b) = &self.max_bytes {
            if crate::runtime::policy::parse_size(b).map_or(true, |n| n == 0) {
                return Some(format!(
                    "`max_bytes` {b:?} is not a size above 0 (e.g. 1MiB)"
                ));
            }
        }
        if self.prefixes.iter().any(|p| p.is_empty()) {
            return Some(
                "an empty prefix would grant every key; name a prefix such as \"myplugin:\"".into(),
            );
        }
        None
    }

    fn expire_ms(&self) -> Option<u64> {
        let e = self.expire.as_deref()?;
        humantime::parse_duration(e)
            .ok()
            .map(|d| d.as_millis() as u64)
    }

    fn max_bytes(&self) -> u64 {
        self.max_bytes
            .as_deref()
            .and_then(|b| crate::runtime::policy::parse_size(b).ok())
            .unwrap_or(MAX_BYTES)
    }

    fn allows(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }
}

/// The Redis behind keyvalue grants, shared by all calls (connections pooled).
#[derive(Clone)]
pub struct KvTarget {
    client: redis::Client,
    namespace: Arc<str>,
    idle: Arc<Mutex<Vec<redis::Connection>>>,
}

impl KvTarget {
    /// `url`: `redis[s]://[user:password@]host:port/db[?ca=/path/ca.pem]`
    /// (see `servers::redis::client`). Keys are stored as `namespace + key`.
    pub fn new(url: &str, namespace: &str) -> Result<KvTarget, redis::RedisError> {
        Ok(KvTarget {
            client: crate::servers::redis::client(url)?,
            namespace: namespace.into(),
            idle: Arc::default(),
        })
    }

    fn take(&self) -> redis::RedisResult<redis::Connection> {
        if let Some(c) = self.idle.lock().unwrap().pop() {
            return Ok(c);
        }
        self.client.get_connection_with_timeout(IO_TIMEOUT)
    }

    fn give_back(&self, conn: redis::Connection) {
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < 16 {
            idle.push(conn);
        }
    }
}

/// The one bucket a plugin can open; the grant's prefixes scope it.
pub struct Bucket;

pub struct KeyvalueCap {
    grant: Option<KeyvalueGrant>,
    target: Option<KvTarget>,
    deadline: Instant,
    table: ResourceTable,
    conn: Option<redis::Connection>,
}

impl KeyvalueCap {
    pub(crate) fn new(
        grant: Option<KeyvalueGrant>,
        target: Option<KvTarget>,
        deadline: Instant,
    ) -> KeyvalueCap {
        KeyvalueCap {
            grant,
            target,
            deadline,
            table: ResourceTable::new(),
            conn: None,
        }
    }

    /// Runs one command on `key` (already checked against the grant).
    fn run<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        build: impl FnOnce(&mut redis::Cmd, String),
    ) -> Result<T, Error> {
        let grant = self.grant.as_ref().ok_or(Error::AccessDenied)?;
        if !grant.allows(key) {
            return Err(Error::AccessDenied);
        }
        let target = self.target.clone().ok_or_else(|| {
            Error::Other("no key-value store is configured for this agent".into())
        })?;
        let mut cmd = redis::Cmd::new();
        build(&mut cmd, format!("{}{key}", target.namespace));
        self.query(&target, &cmd)
    }

    fn query<T: redis::FromRedisValue>(
        &mut self,
        target: &KvTarget,
        cmd: &redis::Cmd,
    ) -> Result<T, Error> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Other("deadline reached".into()));
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => target.take().map_err(redis_error)?,
        };
        let timeout = Some(left.min(IO_TIMEOUT));
        conn.set_read_timeout(timeout)
            .and_then(|_| conn.set_write_timeout(timeout))
            .map_err(redis_error)?;
        let result = cmd.query(&mut conn).map_err(redis_error);
        // A connection that failed mid-command may hold a half-read reply.
        if result.is_ok() {
            self.conn = Some(conn);
        }
        result
    }
}

impl Drop for KeyvalueCap {
    fn drop(&mut self) {
        if let (Some(conn), Some(target)) = (self.conn.take(), &self.target) {
            target.give_back(conn);
        }
    }
}

fn redis_error(e: redis::RedisError) -> Error {
    // The error's text names the command and the server's reply; not the URL.
    Error::Other(format!("redis: {e}"))
}

impl store::Host for KeyvalueCap {
    fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, Error>> {
        if !identifier.is_empty() && identifier != "default" {
            return Ok(Err(Error::NoSuchStore));
        }
        if self.grant.is_none() {
            return Ok(Err(Error::AccessDenied));
        }
        // An agent without Redis has no store: said at open, so a plugin can
        // tell "nothing to check here" from a store that fails.
        if self.target.is_none() {
            return Ok(Err(Error::NoSuchStore));
        }
        Ok(Ok(self.table.push(Bucket)?))
    }
}

impl store::HostBucket for KeyvalueCap {
    fn get(
        &mut self,
        _: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let max = self.grant.as_ref().map_or(MAX_BYTES, |g| g.max_bytes());
        let reply = self.run::<redis::Value>(&key, |c, k| {
            c.arg("EVAL").arg(GET_BOUNDED).arg(1).arg(k).arg(max);
        });
        Ok(reply.and_then(|v| match v {
            redis::Value::Nil => Ok(None),
            redis::Value::BulkString(b) => Ok(Some(b)),
            redis::Value::Int(n) => Err(Error::Other(format!(
                "the value of {key:?} is {n} bytes: more than the grant's max_bytes ({max} bytes)"
            ))),
            other => Err(Error::Other(format!(
                "redis: unexpected reply to GET {key:?}: {other:?}"
            ))),
        }))
    }

    fn set(
        &mut self,
        _: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let expire = self.grant.as_ref().and_then(|g| g.expire_ms());
        Ok(self.run(&key, |c, k| {
            c.arg("SET").arg(k).arg(value);
            if let Some(ms) = expire {
                c.arg("PX").arg(ms);
            }
        }))
    }

    fn delete(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), Error>> {
        Ok(self
            .run::<i64>(&key, |c, k| {
                c.arg("DEL").arg(k);
            })
            .map(drop))
    }

    fn exists(
        &mut self,
        _: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        Ok(self.run(&key, |c, k| {
            c.arg("EXISTS").arg(k);
        }))
    }

    fn list_keys(
        &mut self,
        _: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<KeyResponse, Error>> {
        let (Some(grant), Some(target)) = (self.grant.clone(), self.target.clone()) else {
            return Ok(Err(Error::AccessDenied));
        };
        let mut cmd = redis::Cmd::new();
        cmd.arg("SCAN")
            .arg(cursor.unwrap_or(0))
            .arg("MATCH")
            .arg(format!("{}*", target.namespace))
            .arg("COUNT")
            .arg(PAGE);
        let (next, keys): (u64, Vec<String>) = match self.query(&target, &cmd) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let keys = keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&*target.namespace).map(str::to_string))
            .filter(|k| grant.allows(k))
            .collect();
        Ok(Ok(KeyResponse {
            keys,
            cursor: (next != 0).then_some(next),
        }))
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyvalueCap {
    fn increment(
        &mut self,
        _: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let expire = self.grant.as_ref().and_then(|g| g.expire_ms());
        Ok(self.run(&key, |c, k| match expire {
            None => {
                c.arg("INCRBY").arg(k).arg(delta);
            }
            Some(ms) => {
                c.arg("EVAL")
                    .arg(INCREMENT_EXPIRING)
                    .arg(1)
                    .arg(k)
                    .arg(delta)
                    .arg(ms);
            }
        }))
    }
}

struct Data;
impl HasData for Data {
    type Data<'a> = &'a mut KeyvalueCap;
}

impl Capability for KeyvalueCap {
    type Grant = Option<KeyvalueGrant>;
    const IMPORTS: &'static [&'static str] = &[
        "wasi:keyvalue/store@0.2.0-draft",
        "wasi:keyvalue/atomics@0.2.0-draft",
    ];
    const EXAMPLE: &'static str = "keyvalue = { prefixes = [\"myplugin:\"] }";

    fn granted(grant: &Option<KeyvalueGrant>) -> bool {
        grant.is_some()
    }

    fn problem(grant: &Option<KeyvalueGrant>) -> Option<String> {
        grant.as_ref()?.problem()
    }

    fn detail(grant: &Option<KeyvalueGrant>) -> Option<String> {
        Some(grant.as_ref()?.prefixes.join(" "))
    }

    fn for_call(grant: &Option<KeyvalueGrant>, call: &Call<'_>) -> KeyvalueCap {
        KeyvalueCap::new(grant.clone(), call.context.keyvalue.clone(), call.deadline)
    }

    fn add_to_linker(
        linker: &mut Linker<CapState>,
        get: fn(&mut CapState) -> &mut KeyvalueCap,
    ) -> wasmtime::Result<()> {
        store::add_to_linker::<CapState, Data>(linker, get)?;
        atomics::add_to_linker::<CapState, Data>(linker, get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_scope_keys() {
        let g = KeyvalueGrant {
            prefixes: vec!["rl:".into(), "revoked:".into()],
            expire: None,
            max_bytes: None,
        };
        assert!(g.allows("rl:alice") && g.allows("revoked:42"));
        assert!(!g.allows("r") && !g.allows("other:rl:x"));
        assert!(g.problem().is_none());
        let grant = |prefixes: Vec<&str>, expire: Option<&str>| KeyvalueGrant {
            prefixes: prefixes.into_iter().map(String::from).collect(),
            expire: expire.map(String::from),
            max_bytes: None,
        };
        assert!(grant(vec![], None).problem().is_some());
        assert!(grant(vec![""], None).problem().is_some());
        assert!(grant(vec!["a:"], Some("soon"))
            .problem()
            .unwrap()
            .contains("expire"));
        assert_eq!(grant(vec!["a:"], Some("2m")).expire_ms(), Some(120_000));
    }

    #[test]
    fn denied_without_grant_and_before_any_io() {
        let far = Instant::now() + Duration::from_secs(5);
        let mut cap = KeyvalueCap::new(None, None, far);
        assert!(matches!(
            store::Host::open(&mut cap, "".into()).unwrap(),
            Err(Error::AccessDenied)
        ));
        let grant = KeyvalueGrant {
            prefixes: vec!["ok:".into()],
            expire: None,
            max_bytes: None,
        };
        // The target points nowhere: a denied key must be refused without connecting.
        let target = KvTarget::new("redis://127.0.0.1:1/", "t:").unwrap();
        let mut cap = KeyvalueCap::new(Some(grant), Some(target), far);
        assert!(matches!(
            store::Host::open(&mut cap, "other".into()).unwrap(),
            Err(Error::NoSuchStore)
        ));
        assert!(matches!(
            cap.run::<Option<Vec<u8>>>("nope", |c, k| {
                c.arg("GET").arg(k);
            }),
            Err(Error::AccessDenied)
        ));
    }
}
