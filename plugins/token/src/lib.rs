//! firedrill's signed API tokens.
//!
//! `fdt1.<claims>.<signature>`: the claims are JSON (subject, role, expiry,
//! id, issue time, algorithm), base64url without padding; the signature
//! covers `fdt1.<claims>` and is HMAC-SHA256 (a shared secret) or Ed25519 (the
//! agents hold only the public key). The host issues tokens with this crate
//! (`firedrill token issue`) and the built-in authorizer plugin verifies them
//! with it, so the two can never disagree about the format.
//!
//! Each algorithm has its own key, so a token cannot pick the key it is
//! checked with (no HMAC-with-a-public-key confusion).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const PREFIX: &str = "fdt1.";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who: a person or a system.
    pub sub: String,
    /// viewer, operator or admin.
    pub role: String,
    /// Seconds since the Unix epoch after which the token is refused.
    pub exp: i64,
    pub iat: i64,
    /// The token's id, for revocation and the audit log.
    pub jti: String,
    /// HS256 or EdDSA.
    pub alg: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a firedrill token at all, or damaged.
    Malformed(&'static str),
    BadSignature,
    Expired {
        exp: i64,
    },
    /// Signed with an algorithm this verifier has no key for.
    NoKeyFor(String),
    /// A key in the configuration is not usable.
    BadKey(&'static str),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Malformed(why) => write!(f, "malformed token: {why}"),
            TokenError::BadSignature => write!(f, "bad token signature"),
            TokenError::Expired { exp } => write!(f, "token expired at {exp}"),
            TokenError::NoKeyFor(alg) => {
                write!(f, "token signed with {alg}, for which no key is configured")
            }
            TokenError::BadKey(why) => write!(f, "unusable key: {why}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// What signs tokens.
pub enum SigningKey {
    Hmac(Vec<u8>),
    Ed25519(ed25519_dalek::SigningKey),
}

impl SigningKey {
    /// An Ed25519 private key: base64 of its 32-byte seed (as `keygen` prints).
    pub fn ed25519_from_base64(text: &str) -> Result<SigningKey, TokenError> {
        let seed = key_bytes(text, "an Ed25519 private key is base64 of 32 bytes")?;
        Ok(SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
            &seed,
        )))
    }

    pub fn hmac(secret: &[u8]) -> Result<SigningKey, TokenError> {
        check_hmac(secret)?;
        Ok(SigningKey::Hmac(secret.to_vec()))
    }

    pub fn alg(&self) -> &'static str {
        match self {
            SigningKey::Hmac(_) => "HS256",
            SigningKey::Ed25519(_) => "EdDSA",
        }
    }

    /// A new Ed25519 key pair from 32 random bytes: (private, public), base64.
    pub fn ed25519_pair(seed: [u8; 32]) -> (String, String) {
        let k = ed25519_dalek::SigningKey::from_bytes(&seed);
        (
            STANDARD.encode(k.to_bytes()),
            STANDARD.encode(k.verifying_key().to_bytes()),
        )
    }
}

/// The shortest HMAC secret accepted, for issuing and for verifying: a short
/// one can be guessed offline from a single token.
pub const MIN_HMAC_KEY: usize = 32;

const SHORT_HMAC: &str =
    "an HMAC secret needs at least 32 bytes (generate one: openssl rand -base64 32)";

fn check_hmac(secret: &[u8]) -> Result<(), TokenError> {
    if secret.len() < MIN_HMAC_KEY {
        return Err(TokenError::BadKey(SHORT_HMAC));
    }
    Ok(())
}

/// 32 key bytes from base64, or `BadKey(why)`.
fn key_bytes(text: &str, why: &'static str) -> Result<[u8; 32], TokenError> {
    STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(TokenError::BadKey(why))
}

/// Signs `claims` (its `alg` is set from the key).
pub fn issue(mut claims: Claims, key: &SigningKey) -> String {
    claims.alg = key.alg().to_string();
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
    let signed = format!("{PREFIX}{body}");
    let sig = match key {
        SigningKey::Hmac(secret) => hmac_sha256(secret, signed.as_bytes()),
        SigningKey::Ed25519(k) => {
            use ed25519_dalek::Signer;
            k.sign(signed.as_bytes()).to_bytes().to_vec()
        }
    };
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn hmac_sha256(secret: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The keys a verifier accepts: either or both.
#[derive(Default)]
pub struct Verifier {
    pub hmac: Option<Vec<u8>>,
    pub ed25519: Option<ed25519_dalek::VerifyingKey>,
}

impl Verifier {
    /// An HMAC secret, refused when shorter than [`MIN_HMAC_KEY`].
    pub fn with_hmac(mut self, secret: &[u8]) -> Result<Verifier, TokenError> {
        check_hmac(secret)?;
        self.hmac = Some(secret.to_vec());
        Ok(self)
    }

    /// An Ed25519 public key: base64 of 32 bytes.
    pub fn with_ed25519_base64(mut self, text: &str) -> Result<Verifier, TokenError> {
        let bytes = key_bytes(text, "an Ed25519 public key is base64 of 32 bytes")?;
        self.ed25519 = Some(
            ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|_| TokenError::BadKey("not an Ed25519 public key"))?,
        );
        Ok(self)
    }

    /// Checks the signature, then the expiry, and returns the claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let rest = token
            .strip_prefix(PREFIX)
            .ok_or(TokenError::Malformed("it does not start with fdt1."))?;
        let (body, sig) = rest
            .split_once('.')
            .ok_or(TokenError::Malformed("no signature part"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed("the claims are not base64url"))?;
        let claims: Claims = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("the claims are not the expected JSON"))?;
        let signed = &token.as_bytes()[..PREFIX.len() + body.len()];
        let good = match claims.alg.as_str() {
            "HS256" => {
                let secret = self
                    .hmac
                    .as_ref()
                    .ok_or_else(|| TokenError::NoKeyFor(claims.alg.clone()))?;
                // A verifier built field by field is held to the same floor.
                check_hmac(secret)?;
                let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
                mac.update(signed);
                mac.verify_slice(&sig).is_ok()
            }
            "EdDSA" => {
                let key = self
                    .ed25519
                    .as_ref()
                    .ok_or_else(|| TokenError::NoKeyFor(claims.alg.clone()))?;
                let sig = ed25519_dalek::Signature::from_slice(&sig)
                    .map_err(|_| TokenError::Malformed("the signature has the wrong length"))?;
                key.verify_strict(signed, &sig).is_ok()
            }
            _ => return Err(TokenError::Malformed("unknown algorithm")),
        };
        if !good {
            return Err(TokenError::BadSignature);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired { exp: claims.exp });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            role: "operator".into(),
            exp,
            iat: 0,
            jti: "t1".into(),
            alg: String::new(),
        }
    }

    #[test]
    fn hmac_secrets_shorter_than_32_bytes_are_refused_both_ways() {
        let short = [7u8; 31];
        let e = SigningKey::hmac(&short).err().expect("31 bytes accepted");
        assert!(e.to_string().contains("at least 32 bytes"), "{e}");
        assert!(Verifier::default().with_hmac(&short).is_err());
        assert!(SigningKey::hmac(&[7u8; 32]).is_ok());
        // A token made with a 32-byte key does not verify under a
        // verifier someone filled in with a short key.
        let t = issue(claims(100), &SigningKey::hmac(&[7u8; 32]).unwrap());
        let v = Verifier {
            hmac: Some(short.to_vec()),
            ..Default::default()
        };
        assert!(matches!(v.verify(&t, 50), Err(TokenError::BadKey(_))));
        let v = Verifier::default().with_hmac(&[7u8; 32]).unwrap();
        assert_eq!(v.verify(&t, 50).unwrap().sub, "alice");
    }

    #[test]
    fn hmac_tokens_round_trip_and_refuse_tampering_and_expiry() {
        let key = SigningKey::hmac(&[7u8; 32]).unwrap();
        let t = issue(claims(100), &key);
        let v = Verifier {
            hmac: Some(vec![7u8; 32]),
            ..Default::default()
        };
        assert_eq!(v.verify(&t, 50).unwrap().sub, "alice");
        assert_eq!(v.verify(&t, 100), Err(TokenError::Expired { exp: 100 }));
        let other = Verifier {
            hmac: Some(vec![8u8; 32]),
            ..Default::default()
        };
        assert_eq!(other.verify(&t, 50), Err(TokenError::BadSignature));
        // An admin role spliced into a valid token breaks its signature.
        let (_, sig) = t.rsplit_once('.').unwrap();
        let mut forged = claims(100);
        forged.role = "admin".into();
        forged.alg = "HS256".into();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            v.verify(&format!("fdt1.{body}.{sig}"), 50),
            Err(TokenError::BadSignature)
        );
        assert!(matches!(
            v.verify("Bearer nonsense", 50),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            v.verify("fdt1.!!.!!", 50),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn ed25519_tokens_need_only_the_public_key() {
        let (private, public) = SigningKey::ed25519_pair([3u8; 32]);
        let t = issue(
            claims(100),
            &SigningKey::ed25519_from_base64(&private).unwrap(),
        );
        let v = Verifier::default().with_ed25519_base64(&public).unwrap();
        assert_eq!(v.verify(&t, 1).unwrap().alg, "EdDSA");
        // An HMAC-only verifier does not try the token against its secret.
        let h = Verifier {
            hmac: Some(public.into_bytes()),
            ..Default::default()
        };
        assert_eq!(h.verify(&t, 1), Err(TokenError::NoKeyFor("EdDSA".into())));
        let (_, other) = SigningKey::ed25519_pair([4u8; 32]);
        let v2 = Verifier::default().with_ed25519_base64(&other).unwrap();
        assert_eq!(v2.verify(&t, 1), Err(TokenError::BadSignature));
    }
}
