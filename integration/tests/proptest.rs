//! Property tests of the token endpoint answer reader and the JWT claims reader, through the
//! same entry points as the fuzz targets in `fuzz/` (`entur_auth::__fuzz`).
//!
//! Every property runs 256 cases; the whole file takes well under a second in debug.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use entur_auth::__fuzz::{jwt_claims, token_response, JwtClaims};
use entur_auth::Error;
use proptest::prelude::*;
use serde_json::{json, Value};

/// The crate caps lifetimes at a year.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The lifetime when nothing says otherwise (`TokenSourceBuilder::default_lifetime`).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// RFC 6750 `b64token` characters: what most access tokens are made of.
const B64TOKEN: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=";

/// 256 cases a property. No regression files: a failure prints its minimal input, which
/// belongs in a named test.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(256)
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// A JWT-shaped token: `base64url(header).base64url(payload).signature`.
fn jwt(payload: &Value) -> String {
    format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64url(payload.to_string().as_bytes()),
        b64url(b"not-a-real-signature")
    )
}

/// A 2xx token response body.
fn body(access_token: &str, expires_in: Option<Value>) -> Vec<u8> {
    let mut body = json!({ "access_token": access_token, "token_type": "Bearer" });
    if let Some(expires_in) = expires_in {
        body["expires_in"] = expires_in;
    }
    body.to_string().into_bytes()
}

fn is_invalid_response(result: &Result<Duration, Error>) -> bool {
    result
        .as_ref()
        .is_err_and(|e| e.kind() == entur_auth::ErrorKind::InvalidResponse)
}

/// Whether `token` reads as a JWT with both `exp` and `iat`, which would bound the lifetime.
fn has_exp_and_iat(token: &str) -> bool {
    matches!(
        jwt_claims(token),
        Some(JwtClaims {
            exp: Some(_),
            iat: Some(_),
            ..
        })
    )
}

/// Whether `text` reads as a JSON number once trimmed (what a string `expires_in` may hold).
fn is_numeric(text: &str) -> bool {
    serde_json::from_str::<serde_json::Number>(text.trim()).is_ok()
}

/// Statuses that carry a token: every 2xx.
fn success_status() -> impl Strategy<Value = u16> {
    prop_oneof![Just(200u16), 200u16..300]
}

/// A non-empty string of b64token characters.
fn b64token() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(B64TOKEN), 1..200)
        .prop_map(|bytes| String::from_utf8(bytes).expect("ASCII"))
}

/// A non-empty string of visible ASCII (`0x21`-`0x7E`): every token that can go in a
/// header as one word, as eBay's (`v^1.1#i^1#…`) and Salesforce's (`00D…!AQ4…`) do.
fn visible_token() -> impl Strategy<Value = String> {
    prop_oneof![
        b64token(),
        prop::collection::vec(0x21u8..0x7f, 1..200)
            .prop_map(|bytes| String::from_utf8(bytes).expect("ASCII")),
    ]
}

/// A character that must never reach a header as part of a bearer token.
fn forbidden_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec!['\r', '\n', ' ', '\t', '\0', '\x7f']),
        // Any other ASCII control character.
        (0u8..0x20).prop_map(char::from),
        // Any non-ASCII character.
        any::<char>().prop_filter("non-ASCII", |c| !c.is_ascii()),
    ]
}

/// Positive whole numbers of seconds, from tiny to `u64::MAX`, around the one-year cap.
fn expires_in_secs() -> impl Strategy<Value = u64> {
    prop_oneof![
        1u64..=1000,
        1u64..=2 * 365 * 24 * 3600,
        Just(365 * 24 * 3600),
        Just(365 * 24 * 3600 + 1),
        (1u64 << 53) - 10..(1u64 << 53) + 10,
        any::<u64>().prop_map(|n| n.max(1)),
        Just(u64::MAX),
    ]
}

/// `expires_in` values that are not a usable lifetime.
fn bad_expires_in() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(0.0)),
        Just(json!(-0.0)),
        (i64::MIN..0).prop_map(|n| json!(n)),
        (-1e300f64..0.0).prop_map(|f| json!(f)),
        // Sub-second lifetimes are refused too ("not a positive number of seconds").
        (1e-9f64..1.0).prop_map(|f| json!(f)),
        ".*".prop_filter("not a number", |s| !is_numeric(s))
            .prop_map(|s| json!(s)),
        // Strings holding a number that is not a positive number of seconds.
        prop::sample::select(vec!["0", "-5", "0.5", " -1 ", "0e3", "-0"]).prop_map(|s| json!(s)),
        any::<bool>().prop_map(|b| json!(b)),
        Just(json!([3600])),
        Just(json!({ "seconds": 3600 })),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any status, any `Retry-After` bytes, any body: an answer or an error, never a panic.
    #[test]
    fn token_response_never_panics_on_arbitrary_bytes(
        status in any::<u16>(),
        retry_after in prop::collection::vec(any::<u8>(), 0..64),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = token_response(status, &retry_after, &body);
    }

    /// JSON token responses with arbitrary field values (of every JSON type), under any
    /// status: never a panic, and a success only for 2xx.
    #[test]
    fn token_response_never_panics_on_arbitrary_json(
        status in any::<u16>(),
        header in prop_oneof![Just(String::new()), "[0-9]{1,25}", ".{0,40}", http_date()],
        access_token in prop_oneof![b64token().prop_map(Value::from), json_value()],
        expires_in in prop_oneof![expires_in_secs().prop_map(Value::from), bad_expires_in(), json_value()],
        token_type in prop_oneof![Just(json!("Bearer")), Just(json!("bearer")), json_value()],
        extra in prop::option::of((".{0,12}", json_value())),
    ) {
        let mut body = json!({
            "access_token": access_token,
            "expires_in": expires_in,
            "token_type": token_type,
        });
        if let Some((name, value)) = extra {
            body[name] = value;
        }
        let result = token_response(status, header.as_bytes(), body.to_string().as_bytes());
        if result.is_ok() {
            prop_assert!((200..300).contains(&status) || !(100..1000).contains(&status));
        }
    }

    /// Any string, and any JWT-shaped string with an arbitrary payload: never a panic.
    #[test]
    fn jwt_claims_never_panics(
        token in ".{0,200}",
        header in prop::collection::vec(any::<u8>(), 0..64),
        payload in prop::collection::vec(any::<u8>(), 0..256),
        signature in ".{0,20}",
    ) {
        let _ = jwt_claims(&token);
        let shaped = format!("{}.{}.{signature}", b64url(&header), b64url(&payload));
        let _ = jwt_claims(&shaped);
    }

    /// Any visible-ASCII token and a whole number of seconds, no `exp` and `iat` claims: the
    /// token is accepted and the lifetime is exactly `min(expires_in, 365 days)`.
    #[test]
    fn lifetime_is_expires_in_capped_at_a_year(
        status in success_status(),
        token in visible_token(),
        secs in expires_in_secs(),
    ) {
        prop_assume!(!has_exp_and_iat(&token));
        let lifetime = token_response(status, b"", &body(&token, Some(json!(secs))));
        prop_assert_eq!(
            lifetime.map_err(|e| e.report().to_string()),
            Ok(Duration::from_secs(secs).min(MAX_LIFETIME))
        );
    }

    /// Fractional `expires_in` of at least a second: the lifetime is exactly that many
    /// seconds (up to the cap), fractions kept.
    #[test]
    fn fractional_expires_in_is_kept(
        token in b64token(),
        secs in prop_oneof![1.0f64..10.0, 1.0f64..1e6, 1.0f64..1e12],
    ) {
        prop_assume!(!has_exp_and_iat(&token));
        let body = body(&token, Some(json!(secs)));
        // serde_json's default float parsing may land one ulp off the printed value: expect
        // the number as it reads back, not as it was generated.
        let read: Value = serde_json::from_slice(&body).expect("JSON");
        let secs = read["expires_in"].as_f64().expect("a number");
        let lifetime = token_response(200, b"", &body);
        prop_assert_eq!(
            lifetime.map_err(|e| e.report().to_string()),
            Ok(Duration::from_secs_f64(secs).min(MAX_LIFETIME))
        );
    }

    /// `expires_in` as a string holding a number, padded with spaces or not (as some servers
    /// send it): exactly the lifetime of the same number sent as a number.
    #[test]
    fn numeric_string_expires_in_reads_as_the_number(
        status in success_status(),
        token in b64token(),
        secs in prop_oneof![
            expires_in_secs().prop_map(|n| n.to_string()),
            (1.0f64..1e7).prop_map(|f| f.to_string()),
        ],
        pad in prop::sample::select(vec!["", " ", "  ", "\t"]),
    ) {
        prop_assume!(!has_exp_and_iat(&token));
        let number: Value = serde_json::from_str(&secs).expect("a JSON number");
        let as_number = token_response(status, b"", &body(&token, Some(number)));
        let as_string = token_response(status, b"", &body(&token, Some(json!(format!("{pad}{secs}{pad}")))));
        prop_assert!(as_number.is_ok(), "{:?}", as_number);
        prop_assert_eq!(as_string.map_err(|e| e.report().to_string()), as_number.map_err(|e| e.report().to_string()));
    }

    /// A token with any character outside visible ASCII (CR, LF, space, tab, other
    /// controls, DEL, non-ASCII), anywhere: always `Error::InvalidResponse`.
    #[test]
    fn characters_outside_visible_ascii_are_invalid_responses(
        status in success_status(),
        prefix in prop_oneof![Just(String::new()), visible_token()],
        bad in forbidden_char(),
        suffix in prop_oneof![Just(String::new()), visible_token()],
        secs in expires_in_secs(),
    ) {
        let token = format!("{prefix}{bad}{suffix}");
        let result = token_response(status, b"", &body(&token, Some(json!(secs))));
        prop_assert!(is_invalid_response(&result), "{:?} gave {:?}", token, result);
    }

    /// Zero, negative, sub-second, non-numeric string and other non-number `expires_in`:
    /// always `Error::InvalidResponse`, even with a perfectly good token.
    #[test]
    fn unusable_expires_in_is_an_invalid_response(
        status in success_status(),
        token in b64token(),
        expires_in in bad_expires_in(),
    ) {
        let result = token_response(status, b"", &body(&token, Some(expires_in.clone())));
        prop_assert!(is_invalid_response(&result), "expires_in {} gave {:?}", expires_in, result);
    }

    /// A JWT issued now, `exp` in the future: the lifetime is never longer than `exp - iat`
    /// (1 s slack) nor than `expires_in`; when `exp - iat` is the shorter, it decides.
    #[test]
    fn jwt_exp_bounds_the_lifetime(
        status in success_status(),
        exp_in in prop_oneof![2u64..120, 2u64..200_000, 2u64..10 * 365 * 24 * 3600],
        fraction in prop_oneof![Just(0.0f64), 0.0f64..1.0],
        expires_in in prop::option::of(prop_oneof![1u64..120, 1u64..200_000, expires_in_secs()]),
        scope in prop::option::of("[a-z:]{1,10}( [a-z:]{1,10}){0,3}"),
    ) {
        let now = now_unix();
        let exp = now + exp_in;
        let mut claims = json!({ "exp": exp as f64 + fraction, "iat": now, "sub": "client@clients" });
        if fraction == 0.0 {
            claims["exp"] = json!(exp);
        }
        if let Some(scope) = scope {
            claims["scope"] = json!(scope);
        }
        let token = jwt(&claims);
        let lifetime = token_response(status, b"", &body(&token, expires_in.map(Value::from)))
            .map_err(|e| e.report().to_string());
        prop_assert!(lifetime.is_ok(), "{:?}", lifetime);
        let lifetime = lifetime.unwrap();
        let by_exp = Duration::from_secs(exp_in);
        prop_assert!(lifetime <= by_exp + Duration::from_secs(1), "{lifetime:?} > exp - now = {by_exp:?}");
        prop_assert!(lifetime <= MAX_LIFETIME);
        if let Some(expires_in) = expires_in {
            prop_assert!(lifetime <= Duration::from_secs(expires_in), "{lifetime:?} > expires_in {expires_in}");
        }
        // The earlier of the two deadlines decides (the clock moves a little meanwhile).
        let expect = expires_in.map_or(by_exp, |e| by_exp.min(Duration::from_secs(e))).min(MAX_LIFETIME);
        prop_assert!(lifetime + Duration::from_secs(2) >= expect, "{lifetime:?} much shorter than {expect:?}");
    }

    /// However far this machine's clock is from the issuer's (ten years either way): the
    /// lifetime is exactly `min(expires_in, exp - iat)`, or `exp - iat` alone, and never
    /// depends on this machine's clock.
    #[test]
    fn clock_skew_never_changes_the_lifetime(
        status in success_status(),
        skew in prop_oneof![-3600i64..3600, -10 * 365 * 86_400i64..10 * 365 * 86_400],
        life in prop_oneof![1u64..120, 1u64..200_000, 1u64..2 * 365 * 86_400],
        expires_in in prop::option::of(prop_oneof![1u64..120, 1u64..200_000, expires_in_secs()]),
        scope in prop::option::of(prop_oneof![
            "[a-z:]{1,10}( [a-z:]{1,10}){0,3}".prop_map(Value::from),
            prop::collection::vec("[a-z:]{1,10}", 0..4).prop_map(Value::from),
        ]),
    ) {
        let iat = now_unix().saturating_add_signed(skew);
        let mut claims = json!({ "iat": iat, "exp": iat + life, "sub": "client@clients" });
        if let Some(scope) = scope {
            claims["scope"] = scope;
        }
        let token = jwt(&claims);
        let lifetime = token_response(status, b"", &body(&token, expires_in.map(Value::from)));
        let expect = Duration::from_secs(expires_in.map_or(life, |e| e.min(life))).min(MAX_LIFETIME);
        prop_assert_eq!(lifetime.map_err(|e| e.report().to_string()), Ok(expect));
    }

    /// A JWT whose `exp` is already past by this machine's clock, no `iat`: never a failed
    /// fetch (the server or this machine's clock is wrong). `expires_in` decides, else the
    /// default lifetime.
    #[test]
    fn jwt_exp_in_the_past_never_fails_a_fetch(
        ago in 1u64..1_000_000_000,
        expires_in in prop::option::of(expires_in_secs()),
    ) {
        let token = jwt(&json!({ "exp": now_unix().saturating_sub(ago) }));
        let result = token_response(200, b"", &body(&token, expires_in.map(Value::from)));
        let expect = expires_in.map_or(DEFAULT_LIFETIME, |e| Duration::from_secs(e).min(MAX_LIFETIME));
        prop_assert_eq!(result.map_err(|e| e.report().to_string()), Ok(expect));
    }

    /// Well-formed JWTs: `exp` and `iat` (any u64, or a non-negative float, rounded down;
    /// negative or non-numeric reads as absent) and `scope` (any string, or an array of
    /// strings, joined with spaces; anything else reads as absent) come back as they were
    /// written, each whatever the type of the others, whatever else the payload and header
    /// hold, padded or not.
    #[test]
    fn jwt_claims_round_trip_exp_iat_and_scope(
        exp in numeric_date(),
        iat in numeric_date(),
        scope in prop_oneof![
            ".{0,64}".prop_map(|s| (json!(s), Some(s))),
            prop::collection::vec("[a-z:.]{0,10}", 0..5)
                .prop_map(|scopes| (json!(scopes), Some(scopes.join(" ")))),
            json_value().prop_filter("not a scope", |v| !v.is_string() && !v.is_array())
                .prop_map(|v| (v, None)),
            Just((json!(["read", 1]), None)),
        ],
        present in any::<(bool, bool, bool)>(),
        extra in prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..4),
        header in prop::collection::vec(any::<u8>(), 0..40),
        signature in "[A-Za-z0-9_-]{0,40}",
        padded in any::<bool>(),
    ) {
        let mut claims = serde_json::Map::new();
        for (name, value) in extra {
            if !["exp", "iat", "scope"].contains(&name.as_str()) {
                claims.insert(name, value);
            }
        }
        let mut expect = JwtClaims::default();
        if present.0 {
            claims.insert("exp".into(), exp.0);
            expect.exp = exp.1;
        }
        if present.1 {
            claims.insert("iat".into(), iat.0);
            expect.iat = iat.1;
        }
        if present.2 {
            claims.insert("scope".into(), scope.0);
            expect.scope = scope.1;
        }
        let mut payload = b64url(Value::Object(claims).to_string().as_bytes());
        if padded {
            while !payload.len().is_multiple_of(4) {
                payload.push('=');
            }
        }
        let token = format!("{}.{payload}.{signature}", b64url(&header));
        prop_assert_eq!(jwt_claims(&token), Some(expect));
    }
}

/// A NumericDate claim as written, and as the reader must return it.
fn numeric_date() -> impl Strategy<Value = (Value, Option<u64>)> {
    prop_oneof![
        any::<u64>().prop_map(|n| (json!(n), Some(n))),
        // Expect the float as serde_json reads it back (maybe one ulp off), rounded down.
        (0.0f64..1e15).prop_map(|f| {
            let read: Value = serde_json::from_str(&json!({ "t": f }).to_string()).expect("JSON");
            (json!(f), read["t"].as_f64().map(|f| f as u64))
        }),
        (i64::MIN..0).prop_map(|n| (json!(n), None)),
        ".{0,10}".prop_map(|s| (json!(s), None)),
        Just((Value::Null, None)),
        Just((Value::Bool(true), None)),
        Just((json!([1_700_000_000]), None)),
        Just((json!({ "t": 1 }), None)),
    ]
}

/// An HTTP date (RFC 9110 IMF-fixdate), from 1970 to 9999, or almost one.
fn http_date() -> impl Strategy<Value = String> {
    "(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3][0-9] (Jan|Feb|Mar|Nov|Dec) (19[7-9][0-9]|20[0-9]{2}|9999) [0-2][0-9]:[0-5][0-9]:[0-6][0-9] GMT"
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A JWT whose `exp` is beyond what `SystemTime` can hold (2^63 s and up, or a float that
/// reads as that much): a token whose lifetime `expires_in` decides, never a panic.
///
/// Found by `fuzz/` (target `token_response`, with `fuzz/entur_auth.dict`): `src/token.rs`
/// computed `UNIX_EPOCH + Duration::from_secs(exp)` unchecked, which panicked from 2^63 on.
#[test]
fn huge_exp_claims_do_not_panic() {
    let largest_ok = json!(i64::MAX as u64);
    let lifetime = token_response(
        200,
        b"",
        &body(&jwt(&json!({ "exp": largest_ok })), Some(json!(3600))),
    );
    assert_eq!(
        lifetime.map_err(|e| e.report().to_string()),
        Ok(Duration::from_secs(3600))
    );
    for exp in [
        json!(1u64 << 63),
        json!(u64::MAX),
        json!(1e19),
        json!(1e300),
    ] {
        let token = jwt(&json!({ "exp": exp }));
        let result = std::panic::catch_unwind(|| {
            token_response(200, b"", &body(&token, Some(json!(3600))))
                .map_err(|e| e.report().to_string())
        });
        assert_eq!(
            result.map_err(|_| "panicked"),
            Ok(Ok(Duration::from_secs(3600))),
            "exp {exp}"
        );
    }
}
