//! Keystone-style signed tokens: not persisted, validated offline with the active keys.
//!
//! Fernet tokens are encrypted and authenticated; these are authenticated only (HMAC-SHA256
//! over a JSON payload, base64url), which keeps the properties the control plane depends on:
//! no storage, expiry, key rotation with `max_active_keys`, tamper detection.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

use crate::model::Millis;

/// Keystone's default token lifetime: 3600 s.
pub const TOKEN_EXPIRATION_MS: Millis = 3_600_000;
/// Keystone's `max_active_keys` default for fernet key rotation.
pub const MAX_ACTIVE_KEYS: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPayload {
    pub user_id: String,
    pub project_id: String,
    /// Effective roles, implied roles already expanded.
    pub roles: Vec<String>,
    pub issued_at_ms: Millis,
    pub expires_at_ms: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not match any active key")]
    BadSignature,
    #[error("token expired at {expires_at_ms} ms (now {now_ms} ms)")]
    Expired { expires_at_ms: Millis, now_ms: Millis },
}

/// The signing keys, newest first. Rotation pushes a new primary and drops the oldest.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<[u8; 32]>,
}

impl KeyRing {
    pub fn new(primary: [u8; 32]) -> KeyRing {
        KeyRing { keys: vec![primary] }
    }

    pub fn rotate(&mut self, new_primary: [u8; 32]) {
        self.keys.insert(0, new_primary);
        self.keys.truncate(MAX_ACTIVE_KEYS);
    }

    fn mac(key: &[u8; 32], data: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    pub fn issue(&self, payload: &TokenPayload) -> String {
        let body = serde_json::to_vec(payload).expect("token payload serialises");
        let sig = Self::mac(&self.keys[0], &body);
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&body), URL_SAFE_NO_PAD.encode(sig))
    }

    pub fn validate(&self, token: &str, now_ms: Millis) -> Result<TokenPayload, TokenError> {
        let (body, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed)?;
        let valid = self.keys.iter().any(|k| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(k).expect("HMAC takes any key length");
            mac.update(&body);
            mac.verify_slice(&sig).is_ok()
        });
        if !valid {
            return Err(TokenError::BadSignature);
        }
        let payload: TokenPayload = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
        if now_ms >= payload.expires_at_ms {
            return Err(TokenError::Expired { expires_at_ms: payload.expires_at_ms, now_ms });
        }
        Ok(payload)
    }
}

/// Keystone's implied roles: admin implies member implies reader.
pub fn expand_implied_roles(roles: &[String]) -> Vec<String> {
    let mut out: Vec<String> = roles.to_vec();
    for r in roles {
        match r.as_str() {
            "admin" => out.extend(["member".to_string(), "reader".to_string()]),
            "member" => out.push("reader".to_string()),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> TokenPayload {
        TokenPayload {
            user_id: "u".into(),
            project_id: "p".into(),
            roles: vec!["member".into()],
            issued_at_ms: 0,
            expires_at_ms: TOKEN_EXPIRATION_MS,
        }
    }

    #[test]
    fn round_trip_expiry_and_tamper() {
        let ring = KeyRing::new([1; 32]);
        let token = ring.issue(&payload());
        assert_eq!(ring.validate(&token, 10).unwrap(), payload());
        assert!(matches!(ring.validate(&token, TOKEN_EXPIRATION_MS), Err(TokenError::Expired { .. })));
        let mut bad = token.clone();
        bad.replace_range(0..1, if token.starts_with('e') { "f" } else { "e" });
        assert!(ring.validate(&bad, 10).is_err());
        assert_eq!(ring.validate("garbage", 10), Err(TokenError::Malformed));
        assert_eq!(KeyRing::new([2; 32]).validate(&token, 10), Err(TokenError::BadSignature));
    }

    #[test]
    fn rotation_keeps_max_active_keys() {
        let mut ring = KeyRing::new([1; 32]);
        let old = ring.issue(&payload());
        ring.rotate([2; 32]);
        ring.rotate([3; 32]);
        assert!(ring.validate(&old, 10).is_ok(), "still within max_active_keys");
        ring.rotate([4; 32]);
        assert_eq!(ring.validate(&old, 10), Err(TokenError::BadSignature));
    }

    #[test]
    fn implied_roles() {
        assert_eq!(expand_implied_roles(&["admin".into()]), vec!["admin", "member", "reader"]);
        assert_eq!(expand_implied_roles(&["reader".into()]), vec!["reader"]);
    }
}
