//! Verifying client assertions (`private_key_jwt`, RFC 7523 section 2.2) and JWT bearer
//! grants (section 2.1) as an authorization server does: the signature against the public
//! key registered for the client, `iss`, `sub`, `aud`, `exp`, `iat`, and a `jti` used once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256};
use serde_json::Value;

use crate::Shared;

/// How far ahead of the server's clock an `iat` may be (Maskinporten allows 10 s).
const IAT_LEEWAY_SECS: u64 = 10;
/// The longest `exp − iat` accepted.
const MAX_LIFETIME_SECS: u64 = 300;

/// A client's registered public key.
#[derive(Clone)]
pub(super) struct ClientKey {
    alg: &'static str,
    key: Vec<u8>,
}

impl ClientKey {
    /// Reads a `PUBLIC KEY` (SPKI) PEM: RSA or EC P-256.
    pub(super) fn from_spki_pem(pem: &str) -> Result<ClientKey, String> {
        let base64: String = pem
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with("-----") && !line.is_empty())
            .collect();
        if !pem.contains("BEGIN PUBLIC KEY") {
            return Err("the client public key must be a PEM PUBLIC KEY (SPKI) block".into());
        }
        let der = STANDARD
            .decode(base64)
            .map_err(|_| "the client public key PEM is not valid base64".to_owned())?;
        let (algorithm, key) = spki(&der).ok_or("the client public key is not a valid SPKI")?;
        const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
        const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
        let alg = if algorithm == RSA {
            "RS256"
        } else if algorithm == EC {
            "ES256"
        } else {
            return Err("the client public key is neither RSA nor EC".into());
        };
        Ok(ClientKey {
            alg,
            key: key.to_vec(),
        })
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self.alg {
            "RS256" => UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.key)
                .verify(message, signature)
                .is_ok(),
            _ => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.key)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// One DER element: (tag, content, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let bytes = usize::from(first & 0x7f);
        if bytes == 0 || bytes > 4 || input.len() < bytes {
            return None;
        }
        let mut len = 0usize;
        for &b in &input[..bytes] {
            len = (len << 8) | usize::from(b);
        }
        input = &input[bytes..];
        len
    };
    (input.len() >= len).then(|| (tag, &input[..len], &input[len..]))
}

/// The algorithm OID and the key bits of a SubjectPublicKeyInfo.
fn spki(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (0x30, spki, _) = der(input)? else {
        return None;
    };
    let (0x30, algorithm, rest) = der(spki)? else {
        return None;
    };
    let (0x06, oid, _) = der(algorithm)? else {
        return None;
    };
    let (0x03, bits, _) = der(rest)? else {
        return None;
    };
    // The first byte of a BIT STRING counts the unused bits: 0 for a key.
    let (0, key) = bits.split_first()? else {
        return None;
    };
    Some((oid, key))
}

/// The assertions a server has seen: each `jti`, until its assertion expires.
#[derive(Default)]
pub(super) struct SeenJtis(HashMap<String, u64>);

impl SeenJtis {
    /// Records `jti`; `false` when it was seen before (a replay).
    fn first_use(&mut self, jti: &str, exp: u64, now: u64) -> bool {
        self.0.retain(|_, exp| *exp + MAX_LIFETIME_SECS >= now);
        self.0.insert(jti.to_owned(), exp).is_none()
    }
}

/// What kind of assertion is checked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Use {
    /// `client_assertion`: `sub` must be the client id.
    ClientAuthentication,
    /// The JWT bearer grant: `sub`, when there is one, must be the client id.
    Grant,
}

/// Verifies `assertion`; the claims, or why it is refused (the `error_description`).
pub(super) fn verify(shared: &Shared, assertion: &str, purpose: Use) -> Result<Value, String> {
    let Some(key) = &shared.client_key else {
        return Err(
            "no public key is registered for the client (TestServerBuilder::client_public_key_pem)"
                .into(),
        );
    };
    let mut parts = assertion.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the assertion is not a compact JWS".into());
    };
    let signed = &assertion[..header.len() + 1 + payload.len()];
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).ok();
    let header: Value = decode(header)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or("the assertion's header is not base64url JSON")?;
    if header["alg"].as_str() != Some(key.alg) {
        return Err(format!(
            "the assertion's alg is not {}, the registered key's",
            key.alg
        ));
    }
    if let Some(kid) = &shared.client_key_id {
        if header["kid"].as_str() != Some(kid) {
            return Err("the assertion's kid names no key registered for the client".into());
        }
    }
    let signature = decode(signature).ok_or("the assertion's signature is not base64url")?;
    if !key.verify(signed.as_bytes(), &signature) {
        return Err(
            "the assertion's signature does not verify with the client's registered key".into(),
        );
    }
    let claims: Value = decode(payload)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or("the assertion's payload is not base64url JSON")?;
    if claims["iss"].as_str() != Some(&shared.client_id) {
        return Err("the assertion's iss is not the client id".into());
    }
    match (purpose, claims.get("sub")) {
        (Use::ClientAuthentication, sub) | (Use::Grant, sub @ Some(_)) => {
            if sub.and_then(Value::as_str) != Some(&shared.client_id) {
                return Err("the assertion's sub is not the client id".into());
            }
        }
        (Use::Grant, None) => {}
    }
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(aud) => vec![aud],
        Value::Array(auds) => auds.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let accepted = match &shared.assertion_audience {
        Some(audience) => vec![audience.as_str()],
        None => vec![shared.token_url.as_str(), shared.issuer.as_str()],
    };
    if !audiences.iter().any(|aud| accepted.contains(aud)) {
        return Err(format!(
            "the assertion's aud is not this server ({})",
            accepted.join(" or ")
        ));
    }
    let now = shared.issuer_now().as_secs();
    let (Some(exp), Some(iat)) = (claims["exp"].as_u64(), claims["iat"].as_u64()) else {
        return Err("the assertion has no numeric exp and iat".into());
    };
    if exp <= now {
        return Err("the assertion has expired".into());
    }
    if iat > now + IAT_LEEWAY_SECS {
        return Err("the assertion's iat is in the future".into());
    }
    if exp.saturating_sub(iat) > MAX_LIFETIME_SECS {
        return Err(format!(
            "the assertion is valid for more than {MAX_LIFETIME_SECS} s"
        ));
    }
    let Some(jti) = claims["jti"].as_str() else {
        return Err("the assertion has no jti".into());
    };
    if !shared.state().jtis.first_use(jti, exp, now) {
        shared.assertions_replayed.fetch_add(1, Ordering::SeqCst);
        return Err("the assertion was used before (its jti is replayed)".into());
    }
    Ok(claims)
}
