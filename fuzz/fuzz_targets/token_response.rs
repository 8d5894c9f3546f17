//! Fuzzes the reading of a token endpoint answer, from the raw status, headers and body up
//! to the finished `AccessToken` (`entur_auth::__fuzz::token_response`, which also checks
//! that the refresh comes before retirement and retirement before expiry).
//!
//! Input layout:
//!
//! - bytes 0..2: the HTTP status, big-endian (values that are not a status read as 200);
//! - byte 2: bit 7 selects the mode, bits 0..7 the length `n` of the header value;
//! - the next `n` bytes: the header value, sent as both `Retry-After` (read by error
//!   answers) and `Date` (read by successes, the token server's clock), dropped if it is not
//!   a header value;
//! - the rest, in mode 0: the body, as it is;
//! - the rest, in mode 1: `[k][k bytes][payload]`, wrapped into a JSON token response
//!   `{"access_token":"<header>.<base64url(payload)>.c2ln","token_type":"Bearer",
//!   "expires_in":<the k bytes>}`, so that the JWT claims reader and the lifetime
//!   arithmetic are reached with arbitrary claims and `expires_in` values.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]);
    let structured = data[2] & 0x80 != 0;
    let n = usize::from(data[2] & 0x7f).min(data.len() - 3);
    let header = &data[3..3 + n];
    let rest = &data[3 + n..];
    if !structured {
        let _ = entur_auth::__fuzz::token_response(status, header, rest);
        return;
    }
    let Some((&k, rest)) = rest.split_first() else {
        return;
    };
    let k = usize::from(k).min(rest.len());
    let (expires_in, payload) = rest.split_at(k);
    let mut body = Vec::with_capacity(128 + payload.len() * 2 + expires_in.len());
    body.extend_from_slice(br#"{"access_token":"eyJhbGciOiJSUzI1NiJ9."#);
    body.extend_from_slice(URL_SAFE_NO_PAD.encode(payload).as_bytes());
    body.extend_from_slice(br#".c2ln","token_type":"Bearer","expires_in":"#);
    body.extend_from_slice(expires_in);
    body.push(b'}');
    let _ = entur_auth::__fuzz::token_response(status, header, &body);
});
