//! A misbehaving authorizer for the runtime's containment tests. The request
//! path picks the misbehaviour; never shipped.

use firedrill_plugin_sdk::authorizer::wasi::keyvalue::{atomics, store};
use firedrill_plugin_sdk::authorizer::{
    export, Decision, Grant, Guest, Refusal, RequestFacts, Role,
};
use std::hint::black_box;

struct Hostile;

fn allow(principal: String) -> Decision {
    Decision::Allow(Grant {
        principal,
        role: Role::Viewer,
        credential_id: None,
    })
}

fn deny(reason: String) -> Decision {
    Decision::Deny(Refusal {
        status: 500,
        reason,
        retry_after: None,
    })
}

fn kv_error(e: store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no-such-store".into(),
        store::Error::AccessDenied => "access-denied".into(),
        store::Error::Other(m) => format!("other: {m}"),
    }
}

fn kv(op: &str, key: &str, arg: &str) -> Result<String, String> {
    let bucket = store::open("").map_err(kv_error)?;
    match op {
        "incr" => atomics::increment(&bucket, key, arg.parse().unwrap_or(1))
            .map(|n| n.to_string())
            .map_err(kv_error),
        "set" => bucket
            .set(key, arg.as_bytes())
            .map(|_| "ok".into())
            .map_err(kv_error),
        "get" => bucket
            .get(key)
            .map(|v| {
                v.map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|| "<none>".into())
            })
            .map_err(kv_error),
        "exists" => bucket.exists(key).map(|b| b.to_string()).map_err(kv_error),
        "del" => bucket.delete(key).map(|_| "ok".into()).map_err(kv_error),
        "list" => bucket
            .list_keys(None)
            .map(|r| {
                let mut k = r.keys;
                k.sort();
                k.join(",")
            })
            .map_err(kv_error),
        _ => Err(format!("unknown kv op {op}")),
    }
}

/// A TCP connection to the host's loopback through wasi:sockets.
fn connect(port: u16) -> Result<(), String> {
    use wasi::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    let net = wasi::sockets::instance_network::instance_network();
    let sock = wasi::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4)
        .map_err(|e| format!("{e:?}"))?;
    let to = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port,
        address: (127, 0, 0, 1),
    });
    sock.start_connect(&net, to).map_err(|e| format!("{e:?}"))?;
    sock.subscribe().block();
    sock.finish_connect()
        .map(drop)
        .map_err(|e| format!("{e:?}"))
}

fn recurse(n: u64) -> u64 {
    let buf = black_box([n; 64]);
    if n == 0 {
        0
    } else {
        recurse(n - 1) + buf[3]
    }
}

impl Guest for Hostile {
    fn authorize(facts: RequestFacts) -> Decision {
        // Through the agent's API the paths arrive as /v1/<misbehaviour>.
        let path = facts.path.trim_start_matches('/');
        let parts: Vec<&str> = path
            .strip_prefix("v1/")
            .unwrap_or(path)
            .split('/')
            .collect();
        match parts.as_slice() {
            ["ok"] => allow("ok".into()),
            // State that would survive between calls if instances were reused.
            ["count"] => {
                static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                allow((CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1).to_string())
            }
            ["loop"] => {
                let mut i = 0u64;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            ["grow"] => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            ["trap"] => panic!("hostile plugin panics on purpose"),
            ["recurse"] => allow(recurse(u64::MAX).to_string()),
            ["big", mib] => deny("x".repeat(mib.parse::<usize>().unwrap_or(8) << 20)),
            // Reaching outside: a host file, a socket to a listener on the host.
            ["read"] => match std::fs::read_to_string("/etc/passwd") {
                Ok(t) => allow(format!("read {} bytes", t.len())),
                Err(e) => deny(format!("read: {e}")),
            },
            ["net", port] => match connect(port.parse().unwrap_or(80)) {
                Ok(()) => allow("connected".into()),
                Err(e) => deny(format!("net: {e}")),
            },
            ["env"] => {
                let env = std::env::vars().count();
                let files = std::fs::read_dir("/").map(|d| d.count()).unwrap_or(0);
                allow(format!("env={env} files={files}"))
            }
            ["kv", op, key] => match kv(op, key, "") {
                Ok(v) => allow(v),
                Err(e) => deny(e),
            },
            ["kv", op, key, arg] => match kv(op, key, arg) {
                Ok(v) => allow(v),
                Err(e) => deny(e),
            },
            _ => deny(format!("unknown path {}", facts.path)),
        }
    }
}

export!(Hostile);
