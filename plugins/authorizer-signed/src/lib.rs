//! Built-in authorizer: signed tokens, a revocation list and rate limits in
//! Redis (through the keyvalue grant), IP allow and deny lists.
//!
//! Config (all optional but one key):
//! - `hmac_key`: the HMAC-SHA256 secret (give it as `{ env = "NAME" }`), at
//!   least 32 bytes (a shorter one answers 503 naming the setting);
//!   `ed25519_public_key`: base64 of an Ed25519 public key. At least one.
//! - `allow`, `deny`: comma-separated CIDRs (`10.0.0.0/8, ::1/128`). A peer
//!   in `deny` is refused; with `allow` set, a peer outside it is refused.
//! - `subject_limit`, `address_limit`: `N/period` (`600/1m`), a token bucket
//!   of N requests refilled over the period, per token subject and per peer
//!   address. Kept as two window counters in Redis (the previous window's
//!   count weighted by how much of it still overlaps), so the fleet shares
//!   one bucket. Off when unset or when no keyvalue grant is given.
//! - `revoked_prefix` (default `auth:revoked:`), `rate_prefix` (default
//!   `auth:rate:`): the keys, which the policy's keyvalue grant must cover.
//!   `firedrill token revoke ID` writes `<revoked_prefix>ID`.
//!
//! Order: address lists, address rate, token, revocation, subject rate. A
//! Redis that does not answer denies (503): the authorizer fails closed. An
//! agent without Redis has no revocation list (nothing can be revoked there)
//! and cannot keep limits, which then answer 503 naming the setting.

use firedrill_plugin_sdk::authorizer::wasi::keyvalue::{atomics, store};
use firedrill_plugin_sdk::authorizer::{
    export, Config, Decision, Grant, Guest, Refusal, RequestFacts, Role,
};
use firedrill_token::{TokenError, Verifier};
use std::net::IpAddr;

struct Signed;

fn deny(status: u16, reason: impl Into<String>, retry_after: Option<u32>) -> Decision {
    Decision::Deny(Refusal {
        status,
        reason: reason.into(),
        retry_after,
    })
}

/// A CIDR block: address and prefix length.
struct Cidr(IpAddr, u8);

impl Cidr {
    fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a.parse().ok()?, l.parse().ok()?),
            None => {
                let a: IpAddr = s.parse().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if matches!(addr, IpAddr::V4(_)) {
            32
        } else {
            128
        };
        (len <= max).then_some(Cidr(addr, len))
    }

    fn contains(&self, ip: &IpAddr) -> bool {
        fn bits(ip: &IpAddr) -> (u128, u8) {
            match ip {
                IpAddr::V4(v) => (u32::from(*v) as u128, 32),
                IpAddr::V6(v) => (u128::from(*v), 128),
            }
        }
        // An IPv4 peer seen through an IPv6 socket (::ffff:a.b.c.d).
        let ip = match ip {
            IpAddr::V6(v) => v.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*ip),
            v4 => *v4,
        };
        let ((net, width), (addr, w2)) = (bits(&self.0), bits(&ip));
        if width != w2 {
            return false;
        }
        let shift = (width - self.1) as u32;
        shift >= 128 || (net >> shift) == (addr >> shift)
    }
}

fn cidrs(key: &str) -> Result<Vec<Cidr>, String> {
    Config::get(key)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Cidr::parse(s).ok_or_else(|| format!("config `{key}`: {s:?} is not a CIDR")))
        .collect()
}

/// `N/period`, e.g. `600/1m`: (N, period in seconds).
fn limit(key: &str) -> Result<Option<(u64, i64)>, String> {
    let Some(text) = Config::get(key) else {
        return Ok(None);
    };
    let bad = || format!("config `{key}`: {text:?} is not N/period (e.g. 600/1m)");
    let (n, period) = text.split_once('/').ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    let period = period.trim();
    let (num, unit) = period.split_at(
        period
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(period.len()),
    );
    let num: i64 = if num.is_empty() {
        1
    } else {
        num.parse().map_err(|_| bad())?
    };
    let secs = match unit {
        "s" | "" => num,
        "m" => num * 60,
        "h" => num * 3600,
        _ => return Err(bad()),
    };
    if n == 0 || secs <= 0 {
        return Err(bad());
    }
    Ok(Some((n, secs)))
}

/// Counts one request against a bucket; `Some(seconds)` when it is over.
fn over_limit(
    bucket: &store::Bucket,
    key: &str,
    (n, period): (u64, i64),
    now: i64,
) -> Result<Option<u32>, store::Error> {
    let window = now.div_euclid(period);
    let elapsed = now - window * period;
    let current = atomics::increment(bucket, &format!("{key}:{window}"), 1)?;
    if current > n {
        return Ok(Some((period - elapsed).max(1) as u32));
    }
    let previous: u64 = bucket
        .get(&format!("{key}:{}", window - 1))?
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    // The share of the previous window that still falls in the last `period` seconds.
    let weight = (period - elapsed) as f64 / period as f64;
    let estimate = previous as f64 * weight + current as f64;
    if estimate <= n as f64 {
        return Ok(None);
    }
    // When enough of the previous window has slid out for this request to fit.
    let fits_at = period as f64 * (1.0 - (n as f64 - current as f64) / previous.max(1) as f64);
    Ok(Some(
        ((fits_at - elapsed as f64).ceil() as i64).clamp(1, period) as u32,
    ))
}

fn bearer(facts: &RequestFacts) -> Option<&str> {
    facts
        .headers
        .iter()
        .find(|h| h.name == "authorization")
        .map(|h| h.value.strip_prefix("Bearer ").unwrap_or("").trim())
}

fn decide(facts: &RequestFacts) -> Result<Decision, String> {
    let mut verifier = Verifier::default();
    if let Some(k) = Config::get("hmac_key").filter(|k| !k.is_empty()) {
        verifier = verifier
            .with_hmac(k.as_bytes())
            .map_err(|e| format!("config `hmac_key`: {e}"))?;
    }
    if let Some(k) = Config::get("ed25519_public_key").filter(|k| !k.is_empty()) {
        verifier = verifier
            .with_ed25519_base64(&k)
            .map_err(|e| format!("config `ed25519_public_key`: {e}"))?;
    }
    if verifier.hmac.is_none() && verifier.ed25519.is_none() {
        return Err("no key configured: set `hmac_key` or `ed25519_public_key`".into());
    }
    let (allow, denied) = (cidrs("allow")?, cidrs("deny")?);
    let (per_subject, per_address) = (limit("subject_limit")?, limit("address_limit")?);
    let revoked_prefix = Config::get("revoked_prefix").unwrap_or_else(|| "auth:revoked:".into());
    let rate_prefix = Config::get("rate_prefix").unwrap_or_else(|| "auth:rate:".into());

    let peer: IpAddr = facts.peer.parse().map_err(|_| {
        format!(
            "the host gave a peer address that is not an IP: {:?}",
            facts.peer
        )
    })?;
    if denied.iter().any(|c| c.contains(&peer)) {
        return Ok(deny(
            403,
            format!("address {peer} is on the deny list"),
            None,
        ));
    }
    if !allow.is_empty() && !allow.iter().any(|c| c.contains(&peer)) {
        return Ok(deny(
            403,
            format!("address {peer} is not on the allow list"),
            None,
        ));
    }
    let kv_needed = per_subject.is_some() || per_address.is_some();
    // Without a store (an agent without Redis) there is nothing revoked to check.
    let bucket = match store::open("") {
        Ok(b) => Some(b),
        Err(store::Error::AccessDenied | store::Error::NoSuchStore) if !kv_needed => None,
        Err(store::Error::NoSuchStore) => {
            return Err(
                "subject_limit and address_limit need Redis: set coordination.redis_url".into(),
            )
        }
        Err(e) => return Err(format!("key-value store: {e:?}")),
    };
    let kv = |e: store::Error| format!("key-value store: {e:?}");
    if let (Some(b), Some(l)) = (&bucket, per_address) {
        if let Some(wait) =
            over_limit(b, &format!("{rate_prefix}addr:{peer}"), l, facts.time).map_err(kv)?
        {
            return Ok(deny(
                429,
                format!("too many requests from {peer}"),
                Some(wait),
            ));
        }
    }
    let Some(token) = bearer(facts) else {
        return Ok(deny(
            401,
            "missing bearer token (Authorization: Bearer ...)",
            None,
        ));
    };
    let claims = match verifier.verify(token, facts.time) {
        Ok(c) => c,
        Err(
            e @ (TokenError::Malformed(_)
            | TokenError::BadSignature
            | TokenError::Expired { .. }
            | TokenError::NoKeyFor(_)),
        ) => return Ok(deny(401, e.to_string(), None)),
        Err(e) => return Err(e.to_string()),
    };
    let role = match claims.role.as_str() {
        "viewer" => Role::Viewer,
        "operator" => Role::Operator,
        "admin" => Role::Admin,
        other => {
            return Ok(deny(
                401,
                format!("token carries an unknown role {other:?}"),
                None,
            ))
        }
    };
    if let Some(b) = &bucket {
        if b.exists(&format!("{revoked_prefix}{}", claims.jti))
            .map_err(kv)?
        {
            return Ok(deny(401, format!("token {} is revoked", claims.jti), None));
        }
        if let Some(l) = per_subject {
            if let Some(wait) = over_limit(
                b,
                &format!("{rate_prefix}sub:{}", claims.sub),
                l,
                facts.time,
            )
            .map_err(kv)?
            {
                return Ok(deny(
                    429,
                    format!("too many requests for {}", claims.sub),
                    Some(wait),
                ));
            }
        }
    }
    Ok(Decision::Allow(Grant {
        principal: claims.sub,
        role,
        credential_id: Some(claims.jti),
    }))
}

impl Guest for Signed {
    fn authorize(facts: RequestFacts) -> Decision {
        decide(&facts).unwrap_or_else(|e| deny(503, format!("authorizer: {e}"), None))
    }
}

export!(Signed);

#[cfg(test)]
mod tests {
    use super::Cidr;

    #[test]
    fn cidr_blocks() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(&"10.1.200.3".parse().unwrap()));
        assert!(!c.contains(&"10.2.0.1".parse().unwrap()));
        assert!(c.contains(&"::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(&"8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::1")
            .unwrap()
            .contains(&"::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none() && Cidr::parse("nope").is_none());
    }
}
