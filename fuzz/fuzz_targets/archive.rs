//! The archive reader: a stored object (zstd, optionally an age payload)
//! read back through `ObjectReader` with its manifest entry matching the
//! bytes, so decoding is reached; and age headers unwrapped with an identity.
#![no_main]
use firedrill::archive::age::{self, FileKey, Identity};
use firedrill::archive::manifest::ObjectRef;
use firedrill::archive::{ObjectReader, Store};
use libfuzzer_sys::fuzz_target;
use sha2::Digest;
use std::sync::OnceLock;

struct World {
    rt: tokio::runtime::Runtime,
    store: Store,
    identity: Vec<Identity>,
    key: FileKey,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("firedrill-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        World {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            store: Store::open(&format!("file://{}", dir.display()), &Default::default()).unwrap(),
            identity: vec![Identity::generate()],
            key: FileKey::generate(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let _ = age::unwrap(data, &w.identity);
    let Some((&mode, stored)) = data.split_first() else {
        return;
    };
    let object = ObjectRef {
        path: "data/public.t/00000.copy.zst".into(),
        size: stored.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(stored)),
        // Either bound: a recorded size, or the cap for older manifests.
        raw: (mode & 2 == 2).then_some(64 << 10),
    };
    let key = (mode & 1 == 1).then_some(&w.key);
    w.rt.block_on(async {
        w.store.put("fuzz/object", stored.to_vec()).await.unwrap();
        if let Ok(mut r) = ObjectReader::open(&w.store, "fuzz/object", &object, key).await {
            while let Ok(Some(_)) = r.next().await {}
        }
    });
});
