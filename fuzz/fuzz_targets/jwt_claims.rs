//! Fuzzes the JWT claims reader (`entur_auth::__fuzz::jwt_claims`).
//!
//! Input layout: byte 0 selects the mode, the rest is the data.
//!
//! - mode 0 (even): the data, if UTF-8, is the token as it is;
//! - mode 1 (odd): the data is a JWT payload, sent as `<header>.<base64url(data)>.c2ln`, so
//!   that the JSON parser is reached. Then the answer is checked against `serde_json`'s own
//!   reading of the payload: `exp` and `scope` must be what the payload says.
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
    if let Some((exp, scope)) = claims {
        // The reader accepted the payload, so it is JSON, and what it read must be what the
        // payload says (a number of seconds >= 0, rounded down; a string scope). Like any
        // serde struct, the claims may also come as an array `[exp, scope]`. serde_json does
        // not fully check the values it skips (the UTF-8 of strings, the range of numbers in
        // other claims), so the reader may accept a payload that `Value` refuses: those are
        // not cross-checked.
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        let field = |name: &str, index: usize| match &value {
            serde_json::Value::Array(items) => items.get(index),
            other => other.get(name),
        };
        let expect_exp = field("exp", 0).and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        });
        assert_eq!(exp, expect_exp, "exp read from {value}");
        let expect_scope = field("scope", 1).and_then(|v| v.as_str());
        assert_eq!(scope.as_deref(), expect_scope, "scope read from {value}");
    }
});
