//! Fuzzes the JWT claims reader (`entur_auth::__fuzz::jwt_claims`).
//!
//! Input layout: byte 0 selects the mode, the rest is the data.
//!
//! - mode 0 (even): the data, if UTF-8, is the token as it is;
//! - mode 1 (odd): the data is a JWT payload, sent as `<header>.<base64url(data)>.c2ln`, so
//!   that the JSON parser is reached. Then the answer is checked against `serde_json`'s own
//!   reading of the payload: `exp`, `iat` and `scope` must be what the payload says.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(token) = std::str::from_utf8(data) {
            let _ = entur_auth::__fuzz::jwt_claims(token);
        }
        return;
    }
    let token = format!("eyJhbGciOiJSUzI1NiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(data));
    let claims = entur_auth::__fuzz::jwt_claims(&token);
    if let Some(claims) = claims {
        // The reader accepted the payload, so it is a JSON object, and what it read must be
        // what the payload says, each claim on its own: a number of seconds >= 0, rounded
        // down (else absent); a string scope, or an array of strings joined with spaces
        // (else absent). serde_json does not fully check the values the reader skips (the
        // UTF-8 of strings, the range of numbers in other claims), so the reader may accept
        // a payload that `Value` refuses: those are not cross-checked.
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        assert!(value.is_object(), "claims read from a non-object: {value}");
        let seconds = |name: &str| {
            value.get(name).and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            })
        };
        assert_eq!(claims.exp, seconds("exp"), "exp read from {value}");
        assert_eq!(claims.iat, seconds("iat"), "iat read from {value}");
        let expect_scope = value.get("scope").and_then(|v| match v {
            serde_json::Value::String(scope) => Some(scope.clone()),
            serde_json::Value::Array(items) => items
                .iter()
                .map(serde_json::Value::as_str)
                .collect::<Option<Vec<_>>>()
                .map(|scopes| scopes.join(" ")),
            _ => None,
        });
        assert_eq!(claims.scope, expect_scope, "scope read from {value}");
    } else if let Ok(serde_json::Value::Object(_)) = serde_json::from_slice(data) {
        panic!("a JSON object payload was refused");
    }
});
