//! `WWW-Authenticate` challenges, parsed as RFC 9110 defines them.
//!
//! A field value is a list of challenges (RFC 9110 section 11.6.1), each an auth-scheme with
//! either a token68 or a list of auth-params (section 11.2):
//!
//! ```text
//! WWW-Authenticate = #challenge
//! challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! auth-param       = token BWS "=" BWS ( token / quoted-string )
//! token68          = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
//! ```
//!
//! Lists are comma-separated with optional whitespace and may hold empty elements (section
//! 5.6.1); tokens, whitespace and quoted strings are those of sections 5.6.2 to 5.6.4. Both
//! lists share their commas, so the element after a comma is an auth-param of the current
//! challenge when it is a token followed by `BWS "="`, and a new challenge otherwise.
//! Scheme and parameter names are case-insensitive.
//!
//! The classifier reads the `error` parameter of the `Bearer` challenge (RFC 6750 section 3)
//! to tell a missing scope from a refused token.

use std::borrow::Cow;

use http::header::WWW_AUTHENTICATE;
use http::HeaderMap;

/// At most this many challenges are read from one field value.
const MAX_CHALLENGES: usize = 64;

/// Field values longer than this are ignored.
const MAX_LEN: usize = 16 * 1024;

/// One challenge of a WWW-Authenticate field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Challenge<'a> {
    /// The auth-scheme, as sent.
    pub(crate) scheme: &'a str,
    /// The token68, for schemes that send one instead of parameters.
    pub(crate) token68: Option<&'a str>,
    /// The auth-params in order: names as sent, values unquoted and unescaped.
    pub(crate) params: Vec<(&'a str, Cow<'a, str>)>,
}

impl Challenge<'_> {
    /// The value of parameter `name` (case-insensitive), if present.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_ref())
    }
}

/// The `error` parameter (RFC 6750 section 3) of the first `Bearer` challenge carrying one,
/// across every WWW-Authenticate line of `headers`. Lines that are not valid UTF-8/ASCII are
/// skipped.
pub(crate) fn bearer_error(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(parse)
        .filter(|challenge| challenge.scheme.eq_ignore_ascii_case("Bearer"))
        .find_map(|challenge| challenge.param("error").map(str::to_owned))
}

/// The auth-schemes of every challenge across the WWW-Authenticate lines of `headers`, in
/// order, as sent. The token endpoint's answers use them: `Basic` asks for HTTP Basic client
/// authentication.
pub(crate) fn schemes(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(parse)
        .map(|challenge| challenge.scheme)
}

/// Every challenge in one field value.
///
/// Malformed parts are skipped: the parser resynchronises at the next comma that can start
/// a challenge. A challenge whose scheme, token68 or first parameter is malformed is dropped;
/// one with a later malformed parameter keeps the parameters read before it. Never panics;
/// the work is bounded: it stops after 64 challenges and ignores values longer than 16 KiB.
pub(crate) fn parse(value: &str) -> Vec<Challenge<'_>> {
    let mut out = Vec::new();
    if value.len() > MAX_LEN {
        return out;
    }
    let b = value.as_bytes();
    let mut current: Option<Challenge<'_>> = None;
    let mut pos = 0;
    loop {
        // Whitespace and empty list elements.
        while let Some(b' ' | b'\t' | b',') = b.get(pos) {
            pos += 1;
        }
        if pos == b.len() {
            break;
        }
        let end = match element(value, pos) {
            Some((Element::Challenge(next), end)) => {
                out.extend(current.replace(next));
                if out.len() == MAX_CHALLENGES {
                    current = None;
                    break;
                }
                Some(end)
            }
            Some((Element::Param(name, param), end)) => match current.as_mut() {
                Some(challenge) if challenge.token68.is_none() => {
                    challenge.params.push((name, param));
                    Some(end)
                }
                _ => None, // a parameter without a challenge, or after a token68
            },
            None => None,
        };
        match end {
            Some(end) => pos = end,
            None => {
                out.extend(current.take());
                match resync(b, pos) {
                    Some(next) => pos = next,
                    None => break,
                }
            }
        }
    }
    out.extend(current);
    out
}

/// One element of the comma-separated list.
enum Element<'a> {
    /// An auth-scheme with its token68 or first auth-param.
    Challenge(Challenge<'a>),
    /// A further auth-param of the current challenge.
    Param(&'a str, Cow<'a, str>),
}

/// The list element that starts at `start`, and where it ends: at the comma after it or at
/// the end of `value`. `None` if it is malformed.
fn element(value: &str, start: usize) -> Option<(Element<'_>, usize)> {
    let b = value.as_bytes();
    let name_end = token_end(b, start);
    if name_end == start {
        return None;
    }
    let name = &value[start..name_end];
    // `token BWS "="` is an auth-param of the current challenge; any other token starts a
    // challenge.
    let after_name = skip_ws(b, name_end);
    let (element, end) = if b.get(after_name) == Some(&b'=') {
        let (param, end) = param_value(value, after_name + 1)?;
        (Element::Param(name, param), end)
    } else {
        let mut challenge = Challenge {
            scheme: name,
            token68: None,
            params: Vec::new(),
        };
        let i = skip_sp(b, name_end);
        let end = if i == name_end || at_element_end(b, i) {
            name_end
        } else if let Some(end) = token68_end(b, i) {
            challenge.token68 = Some(&value[i..end]);
            end
        } else {
            let param_end = token_end(b, i);
            if param_end == i {
                return None;
            }
            let eq = skip_ws(b, param_end);
            if b.get(eq) != Some(&b'=') {
                return None;
            }
            let (param, end) = param_value(value, eq + 1)?;
            challenge.params.push((&value[i..param_end], param));
            end
        };
        (Element::Challenge(challenge), end)
    };
    at_element_end(b, end).then_some((element, skip_ws(b, end)))
}

/// The value of an auth-param, `BWS ( token / quoted-string )` from `i`, and where it ends.
fn param_value(value: &str, i: usize) -> Option<(Cow<'_, str>, usize)> {
    let b = value.as_bytes();
    let i = skip_ws(b, i);
    if b.get(i) == Some(&b'"') {
        let end = quoted_end(b, i)?;
        Some((unescape(&value[i + 1..end - 1]), end))
    } else {
        let end = token_end(b, i);
        (end > i).then(|| (Cow::Borrowed(&value[i..end]), end))
    }
}

/// Where the quoted-string that opens at `i` ends (after its closing quote).
fn quoted_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' if is_text(*b.get(j + 1)?) => j += 2, // quoted-pair
            c if is_text(c) && c != b'\\' => j += 1,    // qdtext
            _ => return None,
        }
    }
}

/// The content of a quoted-string with its quoted-pairs resolved.
fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    Cow::Owned(out)
}

/// Where the token68 starting at `i` ends, if one does and the list element ends with it.
fn token68_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    while b.get(j).is_some_and(|&c| is_token68_char(c)) {
        j += 1;
    }
    if j == i {
        return None;
    }
    while b.get(j) == Some(&b'=') {
        j += 1;
    }
    at_element_end(b, j).then_some(j)
}

/// The next position after `from` where a challenge can start: after a comma, whitespace
/// and empty elements, a token not followed by `BWS "="`.
fn resync(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(comma) = b[i..].iter().position(|&c| c == b',') {
        i += comma;
        while let Some(b' ' | b'\t' | b',') = b.get(i) {
            i += 1;
        }
        let name_end = token_end(b, i);
        if name_end > i && b.get(skip_ws(b, name_end)) != Some(&b'=') {
            return Some(i);
        }
    }
    None
}

/// Whether only optional whitespace separates `i` from the next comma or the end.
fn at_element_end(b: &[u8], i: usize) -> bool {
    matches!(b.get(skip_ws(b, i)), None | Some(b','))
}

/// Where the token (`1*tchar`) starting at `i` ends: `i` if there is none.
fn token_end(b: &[u8], i: usize) -> usize {
    i + b[i..].iter().take_while(|&&c| is_tchar(c)).count()
}

/// Skips OWS (and BWS): spaces and tabs.
fn skip_ws(b: &[u8], i: usize) -> usize {
    i + b[i..]
        .iter()
        .take_while(|&&c| c == b' ' || c == b'\t')
        .count()
}

/// Skips spaces only: a challenge's `1*SP`.
fn skip_sp(b: &[u8], i: usize) -> usize {
    i + b[i..].iter().take_while(|&&c| c == b' ').count()
}

/// `tchar` (RFC 9110 section 5.6.2).
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// The characters of a token68 before its trailing `=`s.
fn is_token68_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~+/".contains(&c)
}

/// HTAB, SP, VCHAR or obs-text: what a quoted-pair may escape; `qdtext` is these but `"` and
/// `\`. Bytes of multi-byte UTF-8 characters are obs-text.
fn is_text(c: u8) -> bool {
    c == b'\t' || (c >= b' ' && c != 0x7f)
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

    /// A challenge's scheme, token68 and params, easy to compare.
    type Shape<'a> = (&'a str, Option<&'a str>, Vec<(&'a str, String)>);

    /// The shape of each challenge in `value`.
    fn shape(value: &str) -> Vec<Shape<'_>> {
        parse(value)
            .into_iter()
            .map(|c| {
                let params = c.params.iter().map(|(n, v)| (*n, v.to_string())).collect();
                (c.scheme, c.token68, params)
            })
            .collect()
    }

    fn p<'a>(pairs: &[(&'a str, &str)]) -> Vec<(&'a str, String)> {
        pairs.iter().map(|(n, v)| (*n, v.to_string())).collect()
    }

    #[test]
    fn schemes_of_every_line_in_order() {
        let h = headers(&[
            r#"Bearer realm="a, b", error="invalid_token""#,
            "Basic",
            r#"Negotiate abc==, basic realm="x""#,
        ]);
        assert_eq!(
            schemes(&h).collect::<Vec<_>>(),
            ["Bearer", "Basic", "Negotiate", "basic"]
        );
        assert_eq!(schemes(&HeaderMap::new()).count(), 0);
    }

    #[test]
    fn one_bearer_challenge_with_params() {
        let value = r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#;
        let challenges = parse(value);
        assert_eq!(challenges.len(), 1);
        let bearer = &challenges[0];
        assert_eq!(bearer.scheme, "Bearer");
        assert_eq!(bearer.token68, None);
        assert_eq!(bearer.params.len(), 3);
        assert_eq!(bearer.param("realm"), Some("example"));
        assert_eq!(bearer.param("error"), Some("invalid_token"));
        assert_eq!(
            bearer.param("error_description"),
            Some("The access token expired")
        );
        assert_eq!(bearer.param("scope"), None);
        assert!(matches!(bearer.params[0].1, Cow::Borrowed(_)));
    }

    #[test]
    fn two_challenges_in_one_field() {
        let value = r#"Basic realm="api", Bearer error="insufficient_scope""#;
        assert_eq!(
            shape(value),
            [
                ("Basic", None, p(&[("realm", "api")])),
                ("Bearer", None, p(&[("error", "insufficient_scope")])),
            ]
        );
        assert_eq!(
            bearer_error(&headers(&[value])).as_deref(),
            Some("insufficient_scope")
        );
    }

    #[test]
    fn challenges_over_two_lines() {
        let lines = [r#"Basic realm="api""#, r#"Bearer error="invalid_token""#];
        assert_eq!(
            bearer_error(&headers(&lines)).as_deref(),
            Some("invalid_token")
        );
        // The first Bearer challenge that carries an error, whichever line it is on.
        let lines = [
            r#"Bearer realm="api""#,
            r#"Bearer error="insufficient_scope""#,
        ];
        assert_eq!(
            bearer_error(&headers(&lines)).as_deref(),
            Some("insufficient_scope")
        );
        let lines = [r#"Bearer error="invalid_token""#, r#"Bearer error="other""#];
        assert_eq!(
            bearer_error(&headers(&lines)).as_deref(),
            Some("invalid_token")
        );
        assert_eq!(bearer_error(&headers(&[r#"Basic realm="api""#])), None);
        assert_eq!(bearer_error(&HeaderMap::new()), None);
    }

    #[test]
    fn comma_inside_a_quoted_string() {
        let value = r#"Bearer error_description="a, b", error="invalid_token", Basic realm="x, y""#;
        assert_eq!(
            shape(value),
            [
                (
                    "Bearer",
                    None,
                    p(&[("error_description", "a, b"), ("error", "invalid_token")])
                ),
                ("Basic", None, p(&[("realm", "x, y")])),
            ]
        );
        // A challenge spelled inside a quoted string is not one.
        let value = r#"Bearer error_description="x, Bearer error=\"insufficient_scope\"", error="invalid_token""#;
        assert_eq!(
            bearer_error(&headers(&[value])).as_deref(),
            Some("invalid_token")
        );
    }

    #[test]
    fn escaped_quote_inside_a_quoted_string() {
        let challenges = parse(r#"Bearer realm="say \"hi\" \\ \o", error="invalid_token""#);
        assert_eq!(challenges.len(), 1);
        assert_eq!(challenges[0].param("realm"), Some(r#"say "hi" \ o"#));
        assert!(matches!(challenges[0].params[0].1, Cow::Owned(_)));
        assert_eq!(challenges[0].param("error"), Some("invalid_token"));
        // An escaped quote at the very end.
        assert_eq!(
            shape(r#"Bearer realm="\"", Basic"#),
            [
                ("Bearer", None, p(&[("realm", "\"")])),
                ("Basic", None, vec![]),
            ]
        );
    }

    #[test]
    fn token68() {
        let value = r#"Basic dXNlcjpwYXNz==, Bearer error="invalid_token""#;
        assert_eq!(
            shape(value),
            [
                ("Basic", Some("dXNlcjpwYXNz=="), vec![]),
                ("Bearer", None, p(&[("error", "invalid_token")])),
            ]
        );
        assert_eq!(
            bearer_error(&headers(&[value])).as_deref(),
            Some("invalid_token")
        );
        assert_eq!(
            shape("Negotiate a+b/c-d.e_f~g=, Basic x"),
            [
                ("Negotiate", Some("a+b/c-d.e_f~g="), vec![]),
                ("Basic", Some("x"), vec![]),
            ]
        );
        // A token68 takes no parameters: the stray one is skipped, the challenge kept.
        assert_eq!(
            shape(r#"Basic abc, realm="x", Bearer error="y""#),
            [
                ("Basic", Some("abc"), vec![]),
                ("Bearer", None, p(&[("error", "y")])),
            ]
        );
    }

    #[test]
    fn scheme_without_params_then_another_challenge() {
        assert_eq!(
            shape(r#"Negotiate, Bearer realm="x""#),
            [
                ("Negotiate", None, vec![]),
                ("Bearer", None, p(&[("realm", "x")])),
            ]
        );
        assert_eq!(
            shape("Negotiate ,NTLM , Bearer"),
            [
                ("Negotiate", None, vec![]),
                ("NTLM", None, vec![]),
                ("Bearer", None, vec![]),
            ]
        );
    }

    #[test]
    fn names_are_case_insensitive() {
        let value = "bearer ERROR=invalid_token";
        let challenges = parse(value);
        assert_eq!(challenges[0].scheme, "bearer");
        assert_eq!(challenges[0].params[0].0, "ERROR");
        assert_eq!(challenges[0].param("error"), Some("invalid_token"));
        assert_eq!(challenges[0].param("Error"), Some("invalid_token"));
        assert_eq!(
            bearer_error(&headers(&[value])).as_deref(),
            Some("invalid_token")
        );
        assert_eq!(
            bearer_error(&headers(&["BEARER Error=x"])).as_deref(),
            Some("x")
        );
    }

    #[test]
    fn whitespace_around_equals() {
        assert_eq!(
            shape("Bearer error = \"x\" ,\tscope\t=\tread , realm =y"),
            [(
                "Bearer",
                None,
                p(&[("error", "x"), ("scope", "read"), ("realm", "y")])
            )]
        );
        assert_eq!(
            bearer_error(&headers(&[r#"Bearer error = "x""#])).as_deref(),
            Some("x")
        );
    }

    #[test]
    fn empty_list_elements() {
        assert_eq!(
            shape(r#" , ,Bearer realm="x", , error="y",,  , Basic ,"#),
            [
                ("Bearer", None, p(&[("realm", "x"), ("error", "y")])),
                ("Basic", None, vec![]),
            ]
        );
        // The auth-param list may start with an empty element too.
        assert_eq!(
            shape("Bearer , error=y"),
            [("Bearer", None, p(&[("error", "y")]))]
        );
        assert!(parse("").is_empty());
        assert!(parse(" , ,, ").is_empty());
    }

    #[test]
    fn unquoted_token_values() {
        let value = "Bearer error=insufficient_scope, scope=read.write, realm=!#$%&'*+-.^_`|~09";
        assert_eq!(
            shape(value),
            [(
                "Bearer",
                None,
                p(&[
                    ("error", "insufficient_scope"),
                    ("scope", "read.write"),
                    ("realm", "!#$%&'*+-.^_`|~09")
                ])
            )]
        );
    }

    #[test]
    fn unterminated_quote() {
        assert!(parse(r#"Bearer error="invalid_token"#).is_empty());
        assert_eq!(
            bearer_error(&headers(&[r#"Bearer error="invalid_token"#])),
            None
        );
        // The quote runs into the next challenge and fails after it; the parser resumes at
        // the comma inside it, where a challenge can start.
        assert_eq!(
            shape(r#"Basic realm="unterminated, Bearer error="invalid_token""#),
            [("Bearer", None, p(&[("error", "invalid_token")]))]
        );
        // A challenge keeps what was read before its malformed part.
        assert_eq!(
            shape(r#"Bearer realm="x", error="oops, Basic realm="y""#),
            [
                ("Bearer", None, p(&[("realm", "x")])),
                ("Basic", None, p(&[("realm", "y")])),
            ]
        );
    }

    #[test]
    fn stray_equals_signs() {
        for value in [
            r#"=, Bearer error="x""#,
            r#"=Basic, Bearer error="x""#,
            r#"Basic =realm, Bearer error="x""#,
            r#"Basic realm==a, Bearer error="x""#,
            r#"Basic realm=, Bearer error="x""#,
            r#"realm="orphan", Bearer error="x""#,
            r#"Basic realm= = "a", Bearer error="x""#,
        ] {
            assert_eq!(
                bearer_error(&headers(&[value])).as_deref(),
                Some("x"),
                "{value}"
            );
            assert_eq!(parse(value).last().unwrap().scheme, "Bearer", "{value}");
        }
        // `Basic abc=` is a token68, not a parameter without a value.
        assert_eq!(shape("Basic abc="), [("Basic", Some("abc="), vec![])]);
        // A parameter with no value is skipped along with the rest of its challenge.
        assert_eq!(
            shape(r#"Bearer realm="r", error= , scope="s", Basic"#),
            [
                ("Bearer", None, p(&[("realm", "r")])),
                ("Basic", None, vec![])
            ]
        );
    }

    #[test]
    fn garbage() {
        for value in [
            "\u{1}\u{7f}\u{ff}ÿ, Bearer error=\"x\"",
            "Bearer\terror=y, Bearer error=\"x\"", // a tab is not the `1*SP` after a scheme
            "Bearer error=\"a\u{1}b\", Bearer error=\"x\"",
            "Bearer error=\"a\\\u{1}\", Bearer error=\"x\"",
            "Bearer error=\"a\" junk, Bearer error=\"x\"",
            "Bearer error=a\"b\", Bearer error=\"x\"",
            "Bearer error=\"é\\é\" z, Bearer error=\"x\"",
            "\"\"\", Bearer error=\"x\"",
            "Bea(rer, Bearer error=\"x\"",
        ] {
            // The malformed first challenge is skipped whole, the second one read.
            assert_eq!(
                shape(value),
                [("Bearer", None, p(&[("error", "x")]))],
                "{value:?}"
            );
        }
        // Non-ASCII inside a quoted string is obs-text, and unescaped by character.
        assert_eq!(
            shape("Bearer realm=\"é\\ü\""),
            [("Bearer", None, p(&[("realm", "éü")]))]
        );
        // Lines that are not visible ASCII are skipped, the others still read.
        let mut headers = headers(&[]);
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_bytes(b"Bearer error=\"\xff\"").unwrap(),
        );
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        assert_eq!(bearer_error(&headers).as_deref(), Some("invalid_token"));
    }

    #[test]
    fn long_input() {
        let padding = "a".repeat(MAX_LEN - r#"Bearer error="x", realm="""#.len());
        let value = format!(r#"Bearer error="x", realm="{padding}""#);
        assert_eq!(value.len(), MAX_LEN);
        assert_eq!(parse(&value)[0].param("error"), Some("x"));
        let value = format!(r#"Bearer error="x", realm="{padding}a""#);
        assert!(parse(&value).is_empty());

        // At most 64 challenges, each with its parameters.
        let value = "A a=1, ".repeat(100);
        let challenges = parse(&value);
        assert_eq!(challenges.len(), MAX_CHALLENGES);
        assert!(challenges.iter().all(|c| c.param("a") == Some("1")));
        assert_eq!(parse(&"A,".repeat(1000)).len(), MAX_CHALLENGES);
        let value = format!("{}Bearer error=x", "A, ".repeat(63));
        assert_eq!(parse(&value).len(), 64);
        assert_eq!(bearer_error(&headers(&[&value])).as_deref(), Some("x"));
        let value = format!("{}Bearer error=x", "A, ".repeat(64));
        assert_eq!(bearer_error(&headers(&[&value])), None);

        // Malformed, near the limit: no panic, and no challenge where none is well formed.
        for unit in [
            "\"", ",", "=", "a=", "a \"", ", a \"b", "\\", "a b=\"\\", "=,",
        ] {
            let value = unit.repeat(MAX_LEN / unit.len());
            assert!(parse(&value).len() <= MAX_CHALLENGES);
        }
        assert!(parse(&"\"".repeat(MAX_LEN)).is_empty());
        assert!(parse(&"a=b, ".repeat(MAX_LEN / 5)).is_empty());
    }

    /// Malformed strings built from the grammar's characters: never a panic, and whatever is
    /// returned is made of well-formed names.
    #[test]
    fn random_strings_never_panic() {
        const PIECES: &[&str] = &[
            "Bearer", "Basic", "error", "realm", "a", "Z9", "!", "~", "-", ".", "_", "+", "/", "=",
            "==", ",", " ", "  ", "\t", "\"", "\\", "\\\"", "é", "\u{1}", "\u{7f}", "(", ";",
        ];
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for _ in 0..5000 {
            let value: String = (0..rng.usize(0..24))
                .map(|_| PIECES[rng.usize(..PIECES.len())])
                .collect();
            let challenges = parse(&value);
            assert!(challenges.len() <= MAX_CHALLENGES);
            for c in &challenges {
                assert!(
                    !c.scheme.is_empty() && c.scheme.bytes().all(is_tchar),
                    "{value:?}"
                );
                assert!(c.token68.is_none() || c.params.is_empty(), "{value:?}");
                for (name, _) in &c.params {
                    assert!(!name.is_empty() && name.bytes().all(is_tchar), "{value:?}");
                }
            }
        }
    }

    /// Well-formed fields generated from the grammar, with random whitespace and empty
    /// elements: the parser gives back exactly what was generated.
    #[test]
    fn random_well_formed_fields_round_trip() {
        fn word(rng: &mut fastrand::Rng, alphabet: &[u8]) -> String {
            (0..rng.usize(1..6))
                .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
                .collect()
        }
        fn ows(rng: &mut fastrand::Rng) -> &'static str {
            ["", "", " ", "\t", " \t "][rng.usize(..5)]
        }
        const TCHAR: &[u8] = b"aZ09!#$%&'*+-.^_`|~";
        const TOKEN68: &[u8] = b"aZ09-._~+/";
        const QDTEXT: &[u8] = b"aZ ,=\t\"\\";

        let mut rng = fastrand::Rng::with_seed(9110);
        for _ in 0..3000 {
            let mut expected = Vec::new();
            let mut value = String::new();
            for _ in 0..rng.usize(1..5) {
                let scheme = word(&mut rng, TCHAR);
                value += &scheme;
                let mut token68 = None;
                let mut params = Vec::new();
                match rng.u8(..3) {
                    0 => {}
                    1 => {
                        let t = word(&mut rng, TOKEN68) + &"=".repeat(rng.usize(..3));
                        value += &format!("{}{t}", " ".repeat(rng.usize(1..3)));
                        token68 = Some(t);
                    }
                    _ => {
                        value += " ";
                        for k in 0..rng.usize(1..4) {
                            if k > 0 {
                                value += &format!("{},{}", ows(&mut rng), ows(&mut rng));
                            }
                            let name = word(&mut rng, TCHAR);
                            let (raw, unquoted) = if rng.bool() {
                                let text = word(&mut rng, QDTEXT);
                                let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
                                (format!("\"{escaped}\""), text)
                            } else {
                                let text = word(&mut rng, TCHAR);
                                (text.clone(), text)
                            };
                            value += &format!("{name}{}={}{raw}", ows(&mut rng), ows(&mut rng));
                            params.push((name, unquoted));
                        }
                    }
                }
                value += &format!("{},{}", ows(&mut rng), ows(&mut rng));
                if rng.bool() {
                    value += &format!(",{}", ows(&mut rng));
                }
                expected.push((scheme, token68, params));
            }
            let got: Vec<_> = parse(&value)
                .into_iter()
                .map(|c| {
                    let params: Vec<_> = c
                        .params
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect();
                    (c.scheme.to_owned(), c.token68.map(str::to_owned), params)
                })
                .collect();
            assert_eq!(got, expected, "{value:?}");
        }
    }
}
