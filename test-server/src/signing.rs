//! RS256 signatures for the embedded server's tokens, with a fixed test key, and the JWKS
//! that publishes the key's public half.
//!
//! # The key is public
//!
//! The RSA key below is a **test key**: it is in this crate's published source, so anyone
//! can sign tokens with it. It exists so that tests can check signatures (their own resource
//! server's, against [`TestServer::jwks_url`](super::TestServer::jwks_url)); it must never
//! protect anything real. It was made once with
//! `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048` (PKCS#8) and
//! `openssl pkey -pubout` (SPKI). `ring` signs with it but cannot generate RSA keys, hence a
//! fixed one.

use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RsaPublicKeyComponents, RSA_PKCS1_SHA256};
use serde_json::{json, Value};

/// The private test key (PKCS#8, PEM). Public knowledge: see the module documentation.
const TEST_PRIVATE_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCtpBJPHQMZutfb\n\
H/NQhPIBcUUr959QvggWA+5cTeJax2D5GsyUOYRIKai/9Piju6C5cjCa9Ou8GfdW\n\
K55ZdEhYdkx4E17rA7cd1D4V44T8P1Bmopz6ZFt5QWJUNjsP0XYmQBFDzoCX9X8Z\n\
SDb0nyDZXsDt2tynplkBYppPY23UAcQ17xTJ+TxeNMSdJWU96ORvdqtohINgH2b9\n\
LRsdNqn/b1kjgS0h/UkIlo1qQ6+01wLWWGXK2PbqEzQroU3s96rpMo4Ku9D0XNdA\n\
nuK5x+2WwQY2QPdZawtfvSmqP6QDYn1E6F9wwklPkG2YNqVIniIRB7FVF2FOCAQj\n\
TzX0rMCZAgMBAAECggEAGp1+JkeOz3Am4JzScWfEpcP0PlEDnR9Y+Jw8T5mrNbmU\n\
e5pH+/r087qu9agEPynl8Nw35wiI5EQhTUFSUZPT+FCUWAi1ZoB4nkcyB641bBSo\n\
Vj2xTLqlQBNtkaAzsrEAfcxu2QiGCBobvob7JXO0Ap2Az58vGI4UMR9+rOcopnN9\n\
vSts/Uhptdn1o/Gx0cwD/NJloYNUL+ArfnOlln3qVDKaP4uiRbLh4apfONE2lstx\n\
gfPdPQkhSfHZtxLlaWENplL1oO3L9Azj4iY2Q9Y1ZYTwbXelpSucGsIY6mTk/tEy\n\
IroaspJuEEPLrY6WjenmO9ouVtVklwrKbVHs+ExcoQKBgQDud15RJAkld+BjYewe\n\
vfv5bw04CkS4r0koiTcTdGrwh8oAEROYOdU5lq5PF0u6vYFZ7tQuW97ymWazs8Ra\n\
mCNCXEbKkOHQAJWi8j3VJN5kU7g8lqT+tFn39We/Uw+O3M0CBpgFhhvGQfWKKrr5\n\
P6WNZAsb8ab1QPNCGAQwEl+kuwKBgQC6aIAPMzjUrzCLa0mTEWl5fUsCuqX9/F0f\n\
s+6WYsbyS3upNVhDqZI463HWRCR8IrVWeBA7Wieo5oKulqquycHyy0qZ2qxY1/Yq\n\
VzpxKCHpDnFcN36rdPztd9XU2mdZN/WeWJLhX/PDv7687bstLXQGFoQJgPlW3vP2\n\
6b8bGS2EuwKBgQDm7yyksZw179ibBhqvTtc1IOmRSshwfjgADJoMuiJSG35xABiU\n\
w/UNVzIpH+tTxe/9kv9igc/v6sT95GqUPV9wBYL86r/0OoyvB57/yjugtz7lVhIl\n\
I605Jyw4qYyYkpXqj04rk0tUfU33Zxg5Bv0hZzAm+KfyPNsXN8DeePysvwKBgFcf\n\
1pLEJxDJHRBcwdOaNMkStYd+A21VkZTqvV3OpxvCCfdJNorRa8VszhUOXlsiwcy7\n\
ayLCfXzk2DmPtBDjveGkAKcuXJVdwvGBOZB/6HGMTZGDYpHyqPC4rNnChsFddVBg\n\
J65s8XsRWK3nEzAHaY4a4fWrMV7X8AD8uVSKDQtXAoGBAIpQKr5U/UiYsQ/dmxFI\n\
YEozp9NLS0cnSvaK5B4ZeuJO7SxEUjxBxJOjh2RWGd26eAYoAU8KLEN1nVRx4rYd\n\
0IfL7bXHtcHJA+e5Zx0mx+y0nxgHCrFggI5MHnQw2gC/FEw87XL0P7mvA6jRhk7e\n\
1Xx+QjWeU7bxCm3RgAklj7fz\n\
-----END PRIVATE KEY-----\n";

/// The public half of the test key (SPKI, PEM), as [`TestServer::public_key_pem`] gives it.
///
/// [`TestServer::public_key_pem`]: super::TestServer::public_key_pem
pub(super) const TEST_PUBLIC_KEY_PEM: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAraQSTx0DGbrX2x/zUITy\n\
AXFFK/efUL4IFgPuXE3iWsdg+RrMlDmESCmov/T4o7uguXIwmvTrvBn3ViueWXRI\n\
WHZMeBNe6wO3HdQ+FeOE/D9QZqKc+mRbeUFiVDY7D9F2JkARQ86Al/V/GUg29J8g\n\
2V7A7drcp6ZZAWKaT2Nt1AHENe8Uyfk8XjTEnSVlPejkb3araISDYB9m/S0bHTap\n\
/29ZI4EtIf1JCJaNakOvtNcC1lhlytj26hM0K6FN7Peq6TKOCrvQ9FzXQJ7iucft\n\
lsEGNkD3WWsLX70pqj+kA2J9ROhfcMJJT5BtmDalSJ4iEQexVRdhTggEI0819KzA\n\
mQIDAQAB\n\
-----END PUBLIC KEY-----\n";

/// The signing key, parsed once per process.
pub(super) struct Signer {
    key: RsaKeyPair,
    rng: SystemRandom,
    /// The key id: the RFC 7638 thumbprint of the public key.
    kid: String,
    /// The public modulus, base64url without padding.
    n: String,
    /// The public exponent, base64url without padding.
    e: String,
}

/// The process's [`Signer`].
pub(super) fn signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(Signer::load)
}

impl Signer {
    fn load() -> Signer {
        let der = pem_to_der(TEST_PRIVATE_KEY_PEM);
        let key =
            RsaKeyPair::from_pkcs8(&der).expect("the embedded test key is a valid PKCS#8 RSA key");
        let public: RsaPublicKeyComponents<Vec<u8>> = key.public().into();
        let n = URL_SAFE_NO_PAD.encode(&public.n);
        let e = URL_SAFE_NO_PAD.encode(&public.e);
        // RFC 7638 section 3: the required members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ));
        Signer {
            key,
            rng: SystemRandom::new(),
            kid,
            n,
            e,
        }
    }

    /// The key id, in every token's header and in the JWKS.
    pub(super) fn kid(&self) -> &str {
        &self.kid
    }

    /// A compact JWS of `claims`: header `{"alg":"RS256","kid":…,"typ":"JWT"}`, signed with
    /// RSASSA-PKCS1-v1_5 and SHA-256 (RFC 7518 section 3.3).
    pub(super) fn sign(&self, claims: &Value) -> String {
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid });
        let mut jwt = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, jwt.as_bytes(), &mut signature)
            .expect("RSA signing with a valid key and a buffer of the modulus' length");
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
        jwt
    }

    /// A token of the same shape as [`sign`](Self::sign)'s, whose signature is not valid
    /// (all zeros): for servers started with
    /// [`TestServerBuilder::sign_tokens`](super::TestServerBuilder::sign_tokens)`(false)`.
    pub(super) fn fake_sign(&self, claims: &Value) -> String {
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid });
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(vec![0u8; self.key.public().modulus_len()]),
        )
    }

    /// The public key as a JWK (RFC 7517, RFC 7518 section 6.3).
    pub(super) fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": self.n,
            "e": self.e,
        })
    }

    /// The JWK Set served at `/.well-known/jwks.json`.
    pub(super) fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk()] })
    }
}

/// The DER inside a PEM block.
fn pem_to_der(pem: &str) -> Vec<u8> {
    let base64: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    STANDARD
        .decode(base64)
        .expect("the embedded PEM is valid base64")
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    use super::{pem_to_der, signer, TEST_PUBLIC_KEY_PEM};

    #[test]
    fn the_public_pem_is_the_private_keys_public_half() {
        let spki = pem_to_der(TEST_PUBLIC_KEY_PEM);
        let signer = signer();
        let n = URL_SAFE_NO_PAD.decode(&signer.n).unwrap();
        // An SPKI of RSA holds the modulus, as a DER integer, verbatim.
        assert_eq!(n.len(), 256, "a 2048-bit key");
        assert!(spki.windows(n.len()).any(|window| window == n.as_slice()));
        assert_eq!(signer.e, "AQAB");
        assert_eq!(signer.kid.len(), 43, "a base64url SHA-256");
    }
}
