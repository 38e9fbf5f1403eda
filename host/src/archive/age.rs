//! The age v1 format (age-encryption.org/v1), X25519 recipients only,
//! implemented here so a backup can share one file key across its objects:
//! the header (the file key wrapped for each recipient, and a MAC) is stored
//! once per backup, and every object is an age payload under that key. So
//! `cat keys/1.age <object> | age -d -i key.txt` is a valid age file, and a
//! key rotation rewrites the one header while the data stays untouched.
//!
//! Invariants: the file key and identities never appear in `Debug` output
//! or errors; a payload is handed over only chunk by chunk after each
//! chunk's tag checked, and a truncated stream (no final chunk) is an error.

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hmac::Mac;
use sha2::{Digest, Sha256};

const INTRO: &str = "age-encryption.org/v1\n";
const X25519_INFO: &[u8] = b"age-encryption.org/v1/X25519";
/// Plaintext bytes per payload chunk (the spec's 64 KiB).
const CHUNK: usize = 64 << 10;
const TAG: usize = 16;
const NONCE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AgeError {
    #[error(
        "{0:?} is not an age recipient (expected age1...; `age-keygen -y KEYFILE` prints one)"
    )]
    BadRecipient(String),
    #[error(
        "{0}: not an age identity (expected a line AGE-SECRET-KEY-1..., as age-keygen writes)"
    )]
    BadIdentity(String),
    #[error("the age header is malformed: {0}")]
    Header(&'static str),
    #[error("the age header's MAC does not match: the header was modified")]
    HeaderMac,
    #[error("none of the identities is a recipient of this header")]
    NoMatchingIdentity,
    #[error("{0}")]
    Payload(String),
}

/// A symmetric key, wrapped in the header for each recipient.
#[derive(Clone)]
pub struct FileKey([u8; 16]);

impl FileKey {
    pub fn generate() -> FileKey {
        FileKey(rand::random())
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(***)")
    }
}

/// An X25519 public key: `age1...`.
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient(x25519_dalek::PublicKey);

impl Recipient {
    pub fn parse(text: &str) -> Result<Recipient, AgeError> {
        let text = text.trim();
        let bad = || AgeError::BadRecipient(text.chars().take(80).collect());
        let (hrp, data) = bech32::decode(text).map_err(|_| bad())?;
        if hrp.as_str() != "age" || text.starts_with("AGE") {
            return Err(bad());
        }
        let bytes: [u8; 32] = data.try_into().map_err(|_| bad())?;
        Ok(Recipient(x25519_dalek::PublicKey::from(bytes)))
    }

    /// What the manifest records to name a recipient without its whole key.
    pub fn fingerprint(&self) -> String {
        let d = Sha256::digest(self.to_string().as_bytes());
        format!("age:{}", hex::encode(&d[..8]))
    }
}

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hrp = bech32::Hrp::parse("age").expect("valid hrp");
        let s = bech32::encode::<bech32::Bech32>(hrp, self.0.as_bytes()).expect("32 bytes encode");
        f.write_str(&s)
    }
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipient({self})")
    }
}

/// An X25519 private key: `AGE-SECRET-KEY-1...`.
#[derive(Clone)]
pub struct Identity(x25519_dalek::StaticSecret);

impl Identity {
    pub fn generate() -> Identity {
        Identity(x25519_dalek::StaticSecret::from(rand::random::<[u8; 32]>()))
    }

    /// Every identity in a file as age-keygen writes it (comments and blank
    /// lines skipped). `name` is for messages: the file's path.
    pub fn parse_file(text: &str, name: &str) -> Result<Vec<Identity>, AgeError> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || AgeError::BadIdentity(format!("{name} line {}", n + 1));
            let (hrp, data) = bech32::decode(line).map_err(|_| bad())?;
            if hrp.to_lowercase() != "age-secret-key-" {
                return Err(bad());
            }
            let bytes: [u8; 32] = data.try_into().map_err(|_| bad())?;
            out.push(Identity(x25519_dalek::StaticSecret::from(bytes)));
        }
        if out.is_empty() {
            return Err(AgeError::BadIdentity(format!("{name} holds no key")));
        }
        Ok(out)
    }

    pub fn recipient(&self) -> Recipient {
        Recipient(x25519_dalek::PublicKey::from(&self.0))
    }

    /// The identity as age-keygen writes it, with its public key as a comment.
    pub fn to_file(&self) -> String {
        let hrp = bech32::Hrp::parse("age-secret-key-").expect("valid hrp");
        let secret = bech32::encode_upper::<bech32::Bech32>(hrp, self.0.as_bytes())
            .expect("32 bytes encode");
        format!("# public key: {}\n{secret}\n", self.recipient())
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity(for {})", self.recipient())
    }
}

fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        .expect("32 bytes is a valid HKDF length");
    out
}

fn header_mac(key: &FileKey, header: &[u8]) -> hmac::Hmac<Sha256> {
    let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&hkdf(&key.0, &[], b"header"))
        .expect("any key length");
    mac.update(header);
    mac
}

/// A header wrapping `key` for each recipient.
pub fn wrap(key: &FileKey, recipients: &[Recipient]) -> Vec<u8> {
    let mut header = String::from(INTRO);
    for r in recipients {
        let ephemeral = x25519_dalek::StaticSecret::from(rand::random::<[u8; 32]>());
        let share = x25519_dalek::PublicKey::from(&ephemeral);
        let shared = ephemeral.diffie_hellman(&r.0);
        let salt = [share.as_bytes().as_slice(), r.0.as_bytes()].concat();
        let wrap_key = hkdf(shared.as_bytes(), &salt, X25519_INFO);
        let mut body = key.0.to_vec();
        ChaCha20Poly1305::new(Key::from_slice(&wrap_key))
            .encrypt_in_place(Nonce::from_slice(&[0; 12]), b"", &mut body)
            .expect("a 16-byte key encrypts");
        header.push_str(&format!(
            "-> X25519 {}\n{}\n",
            B64.encode(share.as_bytes()),
            B64.encode(&body)
        ));
    }
    header.push_str("---");
    let mac = header_mac(key, header.as_bytes()).finalize().into_bytes();
    header.push_str(&format!(" {}\n", B64.encode(mac)));
    header.into_bytes()
}

/// The file key of a header, with the first identity that unwraps it; the
/// header's MAC is checked.
pub fn unwrap(header: &[u8], identities: &[Identity]) -> Result<FileKey, AgeError> {
    let text = std::str::from_utf8(header).map_err(|_| AgeError::Header("not text"))?;
    let rest = text.strip_prefix(INTRO).ok_or(AgeError::Header(
        "it does not start with age-encryption.org/v1",
    ))?;
    let mac_at = text.rfind("\n---").ok_or(AgeError::Header("no MAC line"))? + 1;
    let mac_line = text[mac_at..]
        .strip_prefix("--- ")
        .and_then(|l| l.strip_suffix('\n'))
        .ok_or(AgeError::Header("a malformed MAC line"))?;
    let mac = B64
        .decode(mac_line)
        .map_err(|_| AgeError::Header("the MAC is not base64"))?;
    let mut stanzas = Vec::new();
    let mut lines = rest[..mac_at - INTRO.len()].lines();
    while let Some(line) = lines.next() {
        let args = line
            .strip_prefix("-> ")
            .ok_or(AgeError::Header("a line that is not a stanza"))?;
        let body = lines
            .next()
            .ok_or(AgeError::Header("a stanza without a body"))?;
        stanzas.push((args, body));
    }
    let mut found = None;
    'stanzas: for (args, body) in stanzas {
        let Some(share) = args.strip_prefix("X25519 ") else {
            continue;
        };
        let share: [u8; 32] = B64
            .decode(share)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(AgeError::Header("an X25519 stanza with a bad share"))?;
        let body = B64
            .decode(body)
            .map_err(|_| AgeError::Header("a stanza body that is not base64"))?;
        if body.len() != 32 {
            return Err(AgeError::Header("an X25519 stanza body is not 32 bytes"));
        }
        let share = x25519_dalek::PublicKey::from(share);
        for id in identities {
            let shared = id.0.diffie_hellman(&share);
            if !shared.was_contributory() {
                return Err(AgeError::Header("an X25519 share of low order"));
            }
            let ours = x25519_dalek::PublicKey::from(&id.0);
            let salt = [share.as_bytes().as_slice(), ours.as_bytes()].concat();
            let wrap_key = hkdf(shared.as_bytes(), &salt, X25519_INFO);
            let mut key = body.clone();
            if ChaCha20Poly1305::new(Key::from_slice(&wrap_key))
                .decrypt_in_place(Nonce::from_slice(&[0; 12]), b"", &mut key)
                .is_ok()
            {
                found = Some(FileKey(key.try_into().expect("16 bytes")));
                break 'stanzas;
            }
        }
    }
    let key = found.ok_or(AgeError::NoMatchingIdentity)?;
    header_mac(&key, text[..mac_at + 3].as_bytes())
        .verify_slice(&mac)
        .map_err(|_| AgeError::HeaderMac)?;
    Ok(key)
}

fn chunk_nonce(counter: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = last as u8;
    n
}

/// Encrypts one payload, streaming: bytes in, ciphertext out, in 64 KiB chunks.
pub struct Sealer {
    aead: ChaCha20Poly1305,
    counter: u64,
    buf: Vec<u8>,
    nonce: Option<[u8; NONCE]>,
}

impl Sealer {
    pub fn new(key: &FileKey) -> Sealer {
        let nonce: [u8; NONCE] = rand::random();
        let payload_key = hkdf(&key.0, &nonce, b"payload");
        Sealer {
            aead: ChaCha20Poly1305::new(Key::from_slice(&payload_key)),
            counter: 0,
            buf: Vec::with_capacity(2 * CHUNK),
            nonce: Some(nonce),
        }
    }

    fn seal(&mut self, plain: &[u8], last: bool, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .aead
            .encrypt_in_place_detached(
                Nonce::from_slice(&chunk_nonce(self.counter, last)),
                b"",
                &mut out[at..],
            )
            .expect("a chunk encrypts");
        out.extend_from_slice(&tag);
        self.counter += 1;
    }

    /// Ciphertext for what can be sealed so far; the last chunk waits for `finish`.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + NONCE + TAG * (data.len() / CHUNK + 1));
        // The payload's nonce leads its first bytes.
        if let Some(nonce) = self.nonce.take() {
            out.extend_from_slice(&nonce);
        }
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while self.buf.len() - start > CHUNK {
            let chunk = self.buf[start..start + CHUNK].to_vec();
            self.seal(&chunk, false, &mut out);
            start += CHUNK;
        }
        self.buf.drain(..start);
        out
    }

    pub fn finish(mut self) -> Vec<u8> {
        let mut out = self.push(&[]);
        let rest = std::mem::take(&mut self.buf);
        self.seal(&rest, true, &mut out);
        out
    }
}

/// Decrypts one payload, streaming; each chunk is handed over after its tag checked.
pub struct Opener {
    key: FileKey,
    aead: Option<ChaCha20Poly1305>,
    counter: u64,
    buf: Vec<u8>,
}

impl Opener {
    pub fn new(key: &FileKey) -> Opener {
        Opener {
            key: key.clone(),
            aead: None,
            counter: 0,
            buf: Vec::with_capacity(2 * (CHUNK + TAG)),
        }
    }

    fn open(
        &mut self,
        range: std::ops::Range<usize>,
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), AgeError> {
        let aead = self.aead.as_ref().expect("nonce read");
        let sealed = &self.buf[range];
        let (body, tag) = sealed.split_at(sealed.len() - TAG);
        let at = out.len();
        out.extend_from_slice(body);
        aead.decrypt_in_place_detached(
            Nonce::from_slice(&chunk_nonce(self.counter, last)),
            b"",
            &mut out[at..],
            Tag::from_slice(tag),
        )
        .map_err(|_| {
            AgeError::Payload(format!(
                "encrypted chunk {} does not authenticate: it was modified{}",
                self.counter,
                if last {
                    ", or the object was cut short"
                } else {
                    ""
                }
            ))
        })?;
        self.counter += 1;
        Ok(())
    }

    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, AgeError> {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        if self.aead.is_none() {
            if self.buf.len() < NONCE {
                return Ok(Vec::new());
            }
            let payload_key = hkdf(&self.key.0, &self.buf[..NONCE], b"payload");
            self.aead = Some(ChaCha20Poly1305::new(Key::from_slice(&payload_key)));
            start = NONCE;
        }
        let mut out = Vec::with_capacity(self.buf.len());
        while self.buf.len() - start > CHUNK + TAG {
            self.open(start..start + CHUNK + TAG, false, &mut out)?;
            start += CHUNK + TAG;
        }
        self.buf.drain(..start);
        Ok(out)
    }

    /// The last chunk, once the stream ended.
    pub fn finish(mut self) -> Result<Vec<u8>, AgeError> {
        if self.aead.is_none() {
            return Err(AgeError::Payload(
                "shorter than an age payload's nonce".into(),
            ));
        }
        let n = self.buf.len();
        if n < TAG || (n == TAG && self.counter > 0) {
            return Err(AgeError::Payload(
                "the encrypted stream ends without its final chunk: the object was cut short"
                    .into(),
            ));
        }
        let mut out = Vec::with_capacity(n);
        self.open(0..n, true, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal_all(key: &FileKey, data: &[u8], piece: usize) -> Vec<u8> {
        let mut s = Sealer::new(key);
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            out.extend(s.push(p));
        }
        out.extend(s.finish());
        out
    }

    fn open_all(key: &FileKey, data: &[u8], piece: usize) -> Result<Vec<u8>, AgeError> {
        let mut o = Opener::new(key);
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            out.extend(o.push(p)?);
        }
        out.extend(o.finish()?);
        Ok(out)
    }

    #[test]
    fn payloads_round_trip_at_every_chunk_boundary() {
        let key = FileKey::generate();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            for piece in [1000, CHUNK, 5 * CHUNK] {
                let sealed = seal_all(&key, &data, piece);
                let chunks = len.div_ceil(CHUNK).max(1);
                assert_eq!(sealed.len(), NONCE + len + chunks * TAG, "len {len}");
                assert_eq!(open_all(&key, &sealed, 999).unwrap(), data, "len {len}");
            }
        }
    }

    #[test]
    fn tampering_truncation_and_a_wrong_key_are_caught() {
        let key = FileKey::generate();
        let data = vec![42u8; 3 * CHUNK];
        let sealed = seal_all(&key, &data, CHUNK);
        let mut flipped = sealed.clone();
        flipped[NONCE + CHUNK + 100] ^= 1;
        assert!(open_all(&key, &flipped, 4096).is_err());
        // Cut at a chunk boundary: the remaining last chunk is not marked final.
        let cut = &sealed[..NONCE + 2 * (CHUNK + TAG)];
        let e = open_all(&key, cut, 4096).unwrap_err().to_string();
        assert!(e.contains("cut short"), "{e}");
        assert!(open_all(&FileKey::generate(), &sealed, 4096).is_err());
    }

    #[test]
    fn headers_unwrap_for_each_recipient_only() {
        let (a, b, c) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let key = FileKey::generate();
        let header = wrap(&key, &[a.recipient(), b.recipient()]);
        for id in [&a, &b] {
            let k = unwrap(&header, std::slice::from_ref(id)).unwrap();
            assert_eq!(k.0, key.0);
        }
        assert!(matches!(
            unwrap(&header, &[c.clone()]),
            Err(AgeError::NoMatchingIdentity)
        ));
        // A changed byte anywhere in the header: the MAC or a stanza fails.
        let text = String::from_utf8(header.clone()).unwrap();
        let tampered = text.replacen("-> X25519 ", "-> X25519 A", 1);
        assert!(unwrap(tampered.as_bytes(), &[a.clone()]).is_err());
        let mut extra = text.clone();
        extra.insert_str(
            INTRO.len(),
            &format!(
                "-> X25519 {}\n{}\n",
                B64.encode([9u8; 32]),
                B64.encode([1u8; 32])
            ),
        );
        assert!(matches!(
            unwrap(extra.as_bytes(), &[a.clone()]),
            Err(AgeError::HeaderMac)
        ));
    }

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let id = Identity::generate();
        let file = id.to_file();
        let back = Identity::parse_file(&file, "k.txt").unwrap();
        assert_eq!(back[0].recipient(), id.recipient());
        let r = id.recipient().to_string();
        assert!(r.starts_with("age1") && r.len() == 62, "{r}");
        assert_eq!(Recipient::parse(&r).unwrap(), id.recipient());
        assert!(Recipient::parse("age1nope").is_err());
        assert!(Identity::parse_file("# nothing\n", "k.txt").is_err());
        let e = Identity::parse_file(&r, "k.txt").unwrap_err().to_string();
        assert!(e.contains("k.txt line 1"), "{e}");
        assert!(!format!("{id:?}").contains("AGE-SECRET"));
    }
}
