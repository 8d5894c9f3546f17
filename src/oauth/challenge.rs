//! `WWW-Authenticate`, read with http-auth's parser (RFC 7235 and RFC 9110 section 11.6.1:
//! several challenges per field and per line, quoted strings that contain commas,
//! case-insensitive names): the `error` of a `Bearer` challenge (RFC 6750 section 3), which
//! tells a missing scope from a refused token, and the auth-schemes, which tell a token
//! endpoint that wants HTTP Basic.
//!
//! Each header line is read on its own, and a line stops at its first malformed part:
//! http-auth accepts no token68 challenge (`Negotiate abc==`), so a `Bearer` challenge after
//! one on the same line is not seen, and its 401 is read as a refused token. Servers send
//! each scheme on a line of its own in practice.

use http::header::WWW_AUTHENTICATE;
use http::HeaderMap;
use http_auth::parser::ChallengeParser;
use http_auth::ChallengeRef;

/// At most this many challenges are read from one line.
const MAX_CHALLENGES: usize = 64;

/// Lines longer than this are ignored.
const MAX_LEN: usize = 16 * 1024;

/// The `error` parameter of the first `Bearer` challenge carrying one, across every
/// WWW-Authenticate line of `headers`.
pub(crate) fn bearer_error(headers: &HeaderMap) -> Option<String> {
    challenges(headers)
        .filter(|challenge| challenge.scheme.eq_ignore_ascii_case("Bearer"))
        .find_map(|challenge| {
            let (_, value) = challenge
                .params
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("error"))?;
            Some(value.to_unescaped())
        })
}

/// The auth-schemes of every challenge across the WWW-Authenticate lines of `headers`, in
/// order, as sent.
pub(crate) fn schemes(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    challenges(headers).map(|challenge| challenge.scheme)
}

fn challenges(headers: &HeaderMap) -> impl Iterator<Item = ChallengeRef<'_>> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter(|value| value.len() <= MAX_LEN)
        .flat_map(|value| {
            ChallengeParser::new(value)
                .map_while(Result::ok)
                .take(MAX_CHALLENGES)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(WWW_AUTHENTICATE, HeaderValue::from_str(line).unwrap());
        }
        headers
    }

    #[test]
    fn the_bearer_error_among_other_challenges_and_lines() {
        let error = |lines: &[&str]| bearer_error(&headers(lines));
        assert_eq!(
            error(&[r#"Bearer realm="api", error="insufficient_scope", scope="a b""#]),
            Some("insufficient_scope".into())
        );
        // Several challenges on one line, a quoted comma, an escaped quote, any case.
        assert_eq!(
            error(&[
                r#"Basic realm="a, b", bearer ERROR="invalid_token", error_description="say \"hi\"""#
            ]),
            Some("invalid_token".into())
        );
        // Over two lines; the first line's Bearer carries no error.
        assert_eq!(
            error(&[
                r#"Bearer realm="x""#,
                r#"Bearer error="insufficient_scope""#
            ]),
            Some("insufficient_scope".into())
        );
        assert_eq!(error(&["Basic"]), None);
        // A malformed line costs only itself.
        assert_eq!(
            error(&["Bearer error=", r#"Bearer error="invalid_token""#]),
            Some("invalid_token".into())
        );
        // The documented limit: a token68 challenge ends its line.
        assert_eq!(error(&[r#"Negotiate abc==, Bearer error="x""#]), None);
        assert_eq!(
            error(&[&format!("Bearer error=\"{}\"", "x".repeat(MAX_LEN))]),
            None
        );
    }

    #[test]
    fn the_schemes_of_every_line_in_order() {
        let h = headers(&[r#"Bearer realm="x", Basic realm="y""#, "Digest realm=\"z\""]);
        assert_eq!(
            schemes(&h).collect::<Vec<_>>(),
            ["Bearer", "Basic", "Digest"]
        );
        let many = vec!["A"; 100].join(", ");
        assert_eq!(schemes(&headers(&[&many])).count(), MAX_CHALLENGES);
    }
}
