//! The API: raw bytes from a client, through the same per-connection path
//! as a TCP connection (hyper's HTTP/1.1 parser, routing, the authorizer
//! plugin, the handlers), over an in-memory pipe. Seeds carry the token the
//! authorizer accepts, so the fuzzer gets past it.
#![no_main]
use firedrill::api::{serve_connection, ApiState, Authorization, Readiness};
use firedrill::config::Config;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    state: Arc<ApiState>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = std::env::temp_dir().join(format!("firedrill-fuzz-api-{}", std::process::id()));
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::copy(
            root.join("policies/authorizer_token.wasm"),
            policies.join("authorizer_token.wasm"),
        )
        .expect("policies/authorizer_token.wasm: run scripts/build-plugins first");
        std::fs::write(
            policies.join("auth.toml"),
            "world = \"authorizer\"\nwasm = \"authorizer_token.wasm\"\n[grants]\nconfig = true\nlogging = true\n[config]\ntoken = \"fuzz-token\"\nprincipal = \"fuzz\"\nrole = \"viewer\"\n",
        )
        .unwrap();
        let store_url = format!("file://{}", dir.join("store").display());
        let config = Config::parse(
            "fuzz.toml",
            &format!("[agent]\npolicies = {:?}\n[store]\nurl = \"{store_url}\"\n[[source]]\nname = \"app\"\nurls = [\"postgres://127.0.0.1:1/x\"]\nbackup = \"cron: 0 3 1 1 *\"\n", policies.display().to_string()),
            |_| None,
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = rt.block_on(async {
            let agent = Arc::new(firedrill::agent::assemble(config, firedrill::agent::Purpose::Agent).await.unwrap());
            firedrill::launch::api_state(
                agent,
                Arc::new(Readiness::default()),
                Authorization::Plugins,
            )
            .await
            .unwrap()
        });
        World { rt, state }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let task = tokio::spawn(serve_connection(
            w.state.clone(),
            "127.0.0.1:40000".parse().unwrap(),
            server,
        ));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut answer),
        )
        .await;
        drop(client);
        let _ = task.await;
    });
});
