//! [`Config`]: the token source and the auth layer, configured from the environment or a
//! configuration file in one call.

use std::path::{Path, PathBuf};

use crate::auth::EnturAuthLayer;
use crate::error::{sanitize, Error};
use crate::oauth::{
    is_loopback, BodyEncoding, ClientName, ClientSecret, Credentials, Environment, TokenEndpoint,
};
use crate::source::{TokenSource, TokenSourceBuilder};

/// Everything needed to authenticate to Entur (or another OAuth2 server): the client id,
/// where its secret comes from, the token endpoint and the `ET-Client-Name`, read from the
/// environment ([`from_env`](Self::from_env)) or, with the `serde` feature, from a
/// configuration file.
///
/// ```no_run
/// use entur_auth::Config;
/// use tower::ServiceBuilder;
///
/// # async fn run<S>(client: S) -> Result<(), entur_auth::Error> {
/// // ENTUR_CLIENT_ID, ENTUR_CLIENT_SECRET (or ENTUR_CLIENT_SECRET_FILE), ENTUR_ENVIRONMENT,
/// // ET_CLIENT_NAME, and optionally ENTUR_AUDIENCE, ENTUR_TOKEN_URL, ENTUR_TOKEN_BODY.
/// let (source, layer) = Config::from_env()?.build()?;
/// // At startup: wait for the first token; fail at once on bad credentials.
/// source.ready(std::time::Duration::from_secs(30)).await?;
/// let api = ServiceBuilder::new().layer(layer.with_replay()).service(client);
/// # let _ = api; Ok(()) }
/// ```
///
/// # The environment
///
/// | variable | meaning |
/// |---|---|
/// | `ENTUR_CLIENT_ID` | the client id (required) |
/// | `ENTUR_CLIENT_SECRET` | the client secret; or: |
/// | `ENTUR_CLIENT_SECRET_FILE` | the path of a file holding the secret, as Kubernetes and Docker mount secrets (one trailing newline is dropped). Exactly one of the two must be set |
/// | `ENTUR_ENVIRONMENT` | `dev`, `staging` or `production`: Entur's partner token server and the audience of that environment. Required unless `ENTUR_TOKEN_URL` is set |
/// | `ET_CLIENT_NAME` | `<company>-<application>`, sent as `ET-Client-Name`. Required with `ENTUR_ENVIRONMENT` (Entur asks every client for it) |
/// | `ENTUR_AUDIENCE` | overrides the environment's audience |
/// | `ENTUR_TOKEN_URL` | overrides the token URL (Entur's internal server, a gateway, a local test server) |
/// | `ENTUR_TOKEN_BODY` | `json` (the default) or `form` |
///
/// A custom `ENTUR_TOKEN_URL` is still treated as an Entur-style server: the request keeps
/// Entur's JSON body (set `ENTUR_TOKEN_BODY=form` for an RFC 6749 form body), the secret is
/// sent in the body, an API's 408 means the token expired, and the audience is
/// `ENTUR_AUDIENCE`, else the environment's, else none. It must be `https://`, except for a
/// loopback host (`localhost`, `127.0.0.1`, `::1`), where `http://` is accepted. For other
/// settings (HTTP Basic client authentication, a scope, extra parameters), build a
/// [`TokenEndpoint`] in code.
///
/// Every value is checked when it is read: a variable that is missing, empty or malformed
/// fails with an [`ErrorKind::Config`](crate::ErrorKind::Config) that names it and says what to set.
///
/// # A configuration file
///
/// With the `serde` feature, `Config` implements `Deserialize`, with the same settings as
/// fields: `client_id`, `environment`, `client_name`, `audience`, `token_url`, `token_body`.
/// The secret is never in the file: name a file with `client_secret_file`, or an
/// environment variable with `client_secret_env`; with neither, it comes from
/// `ENTUR_CLIENT_SECRET` or `ENTUR_CLIENT_SECRET_FILE`, as above. A `client_secret` field
/// is refused with an error saying why, and so is any unknown field (a misspelt setting).
/// The secret is read when the source is built ([`credentials`](Self::credentials),
/// [`build`](Self::build)), so a rotated secret file is picked up by the next build.
///
/// ```
/// # #[cfg(feature = "serde")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config: entur_auth::Config = serde_json::from_str(r#"{
///     "client_id": "my-client-id",
///     "client_secret_file": "/run/secrets/entur-client-secret",
///     "environment": "staging",
///     "client_name": "acme-ticketing"
/// }"#)?;
/// assert_eq!(config.endpoint().url(), "https://partner.staging.entur.org/oauth/token");
/// # Ok(()) }
/// # #[cfg(not(feature = "serde"))]
/// # fn main() {}
/// ```
///
/// `Debug` never shows the secret.
#[derive(Clone, Debug)]
pub struct Config {
    client_id: String,
    secret: Secret,
    environment: Option<Environment>,
    endpoint: TokenEndpoint,
    client_name: Option<ClientName>,
}

/// Where the client secret comes from.
#[derive(Clone, Debug)]
// Only configuration files (the `serde` feature) name a file or a variable.
#[cfg_attr(not(feature = "serde"), allow(dead_code))]
enum Secret {
    /// Read by [`Config::from_env`] (its `Debug` is redacted).
    Read(ClientSecret),
    /// A file named by the configuration file, read by each build.
    File(PathBuf),
    /// An environment variable named by the configuration file, read by each build.
    Var(String),
    /// The configuration file named none: `ENTUR_CLIENT_SECRET` or
    /// `ENTUR_CLIENT_SECRET_FILE`, read by each build.
    Environment,
}

impl Config {
    /// Reads the configuration from the process environment; see [the
    /// table](Self#the-environment). A secret file is read here.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the variable that is missing, empty, malformed or not UTF-8,
    /// the secret file that cannot be read or is empty, or the two secret variables both set.
    pub fn from_env() -> Result<Self, Error> {
        Self::read(&mut env_var)
    }

    /// Reads the configuration through `lookup`, which returns the value of a variable (or
    /// `None` when it is not set), instead of the process environment: for tests, for
    /// variables with another prefix, for defaults of your own, or for a secret store.
    ///
    /// ```
    /// use entur_auth::{Config, Environment};
    ///
    /// let config = Config::from_lookup(|name| match name {
    ///     "ENTUR_CLIENT_ID" => Some("my-client-id".to_owned()),
    ///     "ENTUR_CLIENT_SECRET" => Some("my-client-secret".to_owned()),
    ///     "ENTUR_ENVIRONMENT" => Some("dev".to_owned()),
    ///     "ET_CLIENT_NAME" => Some("acme-ticketing".to_owned()),
    ///     _ => None,
    /// })?;
    /// assert_eq!(config.environment(), Some(Environment::Dev));
    /// assert!(!format!("{config:?}").contains("my-client-secret"));
    /// # Ok::<(), entur_auth::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`from_env`](Self::from_env).
    pub fn from_lookup<F>(mut lookup: F) -> Result<Self, Error>
    where
        F: FnMut(&str) -> Option<String>,
    {
        Self::read(&mut |name| Ok(lookup(name)))
    }

    fn read(lookup: &mut Lookup<'_>) -> Result<Self, Error> {
        let raw = Raw {
            client_id: lookup(Setting::ClientId.var())?,
            environment: lookup(Setting::Environment.var())?,
            audience: lookup(Setting::Audience.var())?,
            token_url: lookup(Setting::TokenUrl.var())?,
            token_body: lookup(Setting::TokenBody.var())?,
            client_name: lookup(Setting::ClientName.var())?,
        };
        raw.resolve(Origin::Env, || {
            secret_from_env(lookup, false).map(Secret::Read)
        })
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Entur's environment, when one is configured.
    pub fn environment(&self) -> Option<Environment> {
        self.environment
    }

    /// The token endpoint: Entur's partner server for the environment, or the custom token
    /// URL, with the audience and body encoding.
    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    /// The `ET-Client-Name`, when one is configured.
    pub fn client_name(&self) -> Option<&ClientName> {
        self.client_name.as_ref()
    }

    /// The client id and its secret. A secret named by a configuration file (a file or an
    /// environment variable) is read now, every call.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the secret file cannot be read or is empty, or the variable is
    /// not set or empty.
    pub fn credentials(&self) -> Result<Credentials, Error> {
        let secret = self.secret_with(&mut env_var)?;
        Ok(Credentials::with_secret(self.client_id.clone(), secret))
    }

    /// A [`TokenSourceBuilder`] for this configuration, to change a setting before
    /// [`build`](TokenSourceBuilder::build): timeouts, backoff, an extra root certificate, a
    /// shared store. An `http://` loopback token URL is allowed. The configured
    /// `ET-Client-Name` is the source's
    /// ([`TokenSourceBuilder::client_name`](crate::TokenSourceBuilder::client_name)), so every
    /// adapter built from the source sends it: the layer, the reqwest middleware and the
    /// tonic interceptor alike.
    ///
    /// # Errors
    ///
    /// As [`credentials`](Self::credentials).
    pub fn source_builder(&self) -> Result<TokenSourceBuilder, Error> {
        let plain_http = self.endpoint.url().scheme_str() == Some("http");
        let builder = TokenSource::builder(self.endpoint.clone(), self.credentials()?)
            .allow_http_loopback(plain_http);
        Ok(match &self.client_name {
            Some(name) => builder.client_name(name.clone()),
            None => builder,
        })
    }

    /// The token source and an auth layer made from it: [`source_builder`](Self::source_builder),
    /// built, then [`EnturAuthLayer::new`]. Add the replay with
    /// [`EnturAuthLayer::with_replay`]; for reqwest or tonic, build their adapter from the
    /// source or from the layer.
    ///
    /// # Errors
    ///
    /// As [`source_builder`](Self::source_builder), and as
    /// [`TokenSourceBuilder::build`](crate::TokenSourceBuilder::build).
    pub fn build(&self) -> Result<(TokenSource, EnturAuthLayer), Error> {
        let source = self.source_builder()?.build()?;
        let layer = EnturAuthLayer::new(source.clone());
        Ok((source, layer))
    }

    fn secret_with(&self, lookup: &mut Lookup<'_>) -> Result<ClientSecret, Error> {
        match &self.secret {
            Secret::Read(secret) => Ok(secret.clone()),
            Secret::File(path) => read_secret_file(path, Origin::File, Setting::ClientSecretFile),
            Secret::Var(name) => match lookup(name)? {
                None => Err(Error::config(format!(
                    "`client_secret_env` names the environment variable {name}, which is not set: set {name} to the client secret, or name the variable that holds it"
                ))),
                Some(value) if value.trim().is_empty() => Err(Error::config(format!(
                    "`client_secret_env` names the environment variable {name}, which is empty: set {name} to the client secret"
                ))),
                Some(value) => Ok(ClientSecret::new(value.trim())),
            },
            Secret::Environment => secret_from_env(lookup, true),
        }
    }
}

impl Credentials {
    /// Credentials from the environment: `ENTUR_CLIENT_ID`, and `ENTUR_CLIENT_SECRET` or
    /// `ENTUR_CLIENT_SECRET_FILE` (the path of a file holding the secret, as Kubernetes and
    /// Docker mount secrets; one trailing newline is dropped), as [`Config::from_env`] reads
    /// them.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the variable that is missing, empty or not UTF-8, the secret
    /// file that cannot be read or is empty, or the two secret variables both set.
    pub fn from_env() -> Result<Self, Error> {
        let client_id = required(
            Origin::Env,
            Setting::ClientId,
            env_var(Setting::ClientId.var())?,
        )?;
        let client_secret = secret_from_env(&mut env_var, false)?;
        Ok(Self::with_secret(client_id, client_secret))
    }
}

/// Reads a variable: `Ok(None)` when it is not set.
type Lookup<'a> = dyn FnMut(&str) -> Result<Option<String>, Error> + 'a;

/// The process environment as a [`Lookup`].
fn env_var(name: &str) -> Result<Option<String>, Error> {
    var_value(name, std::env::var(name))
}

fn var_value(
    name: &str,
    value: Result<String, std::env::VarError>,
) -> Result<Option<String>, Error> {
    match value {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::config(format!(
            "{name} is not valid UTF-8: set it to plain text"
        ))),
    }
}

/// One setting, by its environment variable and its field in a configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "serde"), allow(dead_code))]
enum Setting {
    ClientId,
    ClientSecret,
    ClientSecretFile,
    ClientSecretEnv,
    Environment,
    Audience,
    TokenUrl,
    TokenBody,
    ClientName,
}

impl Setting {
    fn var(self) -> &'static str {
        match self {
            Self::ClientId => "ENTUR_CLIENT_ID",
            Self::ClientSecret => "ENTUR_CLIENT_SECRET",
            Self::ClientSecretFile => "ENTUR_CLIENT_SECRET_FILE",
            // Only configuration files name the secret's variable.
            Self::ClientSecretEnv => "client_secret_env",
            Self::Environment => "ENTUR_ENVIRONMENT",
            Self::Audience => "ENTUR_AUDIENCE",
            Self::TokenUrl => "ENTUR_TOKEN_URL",
            Self::TokenBody => "ENTUR_TOKEN_BODY",
            Self::ClientName => "ET_CLIENT_NAME",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Self::ClientId => "client_id",
            Self::ClientSecret => "client_secret",
            Self::ClientSecretFile => "client_secret_file",
            Self::ClientSecretEnv => "client_secret_env",
            Self::Environment => "environment",
            Self::Audience => "audience",
            Self::TokenUrl => "token_url",
            Self::TokenBody => "token_body",
            Self::ClientName => "client_name",
        }
    }
}

/// Where the settings come from: messages name variables or fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Env,
    File,
}

impl Origin {
    /// `ENTUR_AUDIENCE`, or `` `audience` ``.
    fn name(self, setting: Setting) -> String {
        match self {
            Self::Env => setting.var().to_owned(),
            Self::File => format!("`{}`", setting.field()),
        }
    }

    fn missing(self, setting: Setting, todo: &str) -> Error {
        Error::config(match self {
            Self::Env => format!("{} is not set: {todo}", setting.var()),
            Self::File => {
                format!("the configuration has no `{}`: {todo}", setting.field())
            }
        })
    }

    fn empty(self, setting: Setting, todo: &str) -> Error {
        Error::config(format!("{} is set but empty: {todo}", self.name(setting)))
    }

    /// `value` is not what `setting` takes.
    fn malformed(self, setting: Setting, value: &str, todo: &str) -> Error {
        Error::config(format!(
            "{} is {:?}: {todo}",
            self.name(setting),
            sanitize(value, 200)
        ))
    }
}

/// What each setting wants, for the messages.
fn todo(origin: Origin, setting: Setting) -> String {
    let name = |s| origin.name(s);
    match setting {
        Setting::ClientId => "set it to the client id Entur issued".to_owned(),
        Setting::Environment => format!(
            "set it to dev, staging or production, the Entur environment the credentials belong to (or set {} to use another token endpoint)",
            name(Setting::TokenUrl)
        ),
        Setting::Audience => format!(
            "set it to the audience of the API (Entur: https://api.entur.io, https://api.staging.entur.io or https://api.dev.entur.io), or leave it out to use {}'s",
            name(Setting::Environment)
        ),
        Setting::TokenUrl => format!(
            "set it to the absolute https:// URL of the token endpoint, or leave it out to use Entur's partner token server for {}",
            name(Setting::Environment)
        ),
        Setting::TokenBody => "use json (Entur's, the default) or form (RFC 6749)".to_owned(),
        Setting::ClientName => "Entur asks every client to name itself in the ET-Client-Name header: set it to <company>-<application> (ASCII letters, digits, '-', '_', '.'), e.g. acme-ticketing".to_owned(),
        Setting::ClientSecretFile => {
            "set it to the path of the file that holds the client secret".to_owned()
        }
        Setting::ClientSecretEnv => {
            "set it to the name of the environment variable that holds the client secret".to_owned()
        }
        Setting::ClientSecret => format!(
            "set it to the client secret Entur issued, or leave it out and set {} to the path of a file holding it",
            name(Setting::ClientSecretFile)
        ),
    }
}

/// A value that must be there and not blank, trimmed.
fn required(origin: Origin, setting: Setting, value: Option<String>) -> Result<String, Error> {
    match optional(origin, setting, value)? {
        Some(value) => Ok(value),
        None => Err(origin.missing(setting, &todo(origin, setting))),
    }
}

/// A value that may be left out, but not left blank, trimmed.
fn optional(
    origin: Origin,
    setting: Setting,
    value: Option<String>,
) -> Result<Option<String>, Error> {
    match value {
        None => Ok(None),
        Some(value) if value.trim().is_empty() => {
            Err(origin.empty(setting, &todo(origin, setting)))
        }
        Some(value) => Ok(Some(value.trim().to_owned())),
    }
}

/// The settings other than the secret, as read.
struct Raw {
    client_id: Option<String>,
    environment: Option<String>,
    audience: Option<String>,
    token_url: Option<String>,
    token_body: Option<String>,
    client_name: Option<String>,
}

impl Raw {
    /// Checks every setting, in the order a user fixes them: who (the id, then its secret),
    /// where, then the rest.
    fn resolve(
        self,
        origin: Origin,
        secret: impl FnOnce() -> Result<Secret, Error>,
    ) -> Result<Config, Error> {
        let client_id = required(origin, Setting::ClientId, self.client_id)?;
        let secret = secret()?;
        let environment = optional(origin, Setting::Environment, self.environment)?
            .map(|value| {
                value.parse::<Environment>().map_err(|_| {
                    origin.malformed(
                        Setting::Environment,
                        &value,
                        "use dev, staging or production",
                    )
                })
            })
            .transpose()?;
        let token_url = optional(origin, Setting::TokenUrl, self.token_url)?;
        let audience = optional(origin, Setting::Audience, self.audience)?;
        if let Some(audience) = &audience {
            if audience
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(origin.malformed(
                    Setting::Audience,
                    audience,
                    "an audience is one URI, without spaces, e.g. https://api.entur.io",
                ));
            }
        }
        let encoding = optional(origin, Setting::TokenBody, self.token_body)?
            .map(|value| match value.to_ascii_lowercase().as_str() {
                "json" => Ok(BodyEncoding::Json),
                "form" => Ok(BodyEncoding::Form),
                _ => Err(origin.malformed(
                    Setting::TokenBody,
                    &value,
                    &todo(origin, Setting::TokenBody),
                )),
            })
            .transpose()?;
        let client_name = optional(origin, Setting::ClientName, self.client_name)?
            .map(|value| {
                ClientName::new(&value).map_err(|_| {
                    origin.malformed(
                        Setting::ClientName,
                        &value,
                        "it must be <company>-<application> (ASCII letters, digits, '-', '_', '.'), e.g. acme-ticketing",
                    )
                })
            })
            .transpose()?;

        let mut endpoint = match (&token_url, environment) {
            (Some(url), environment) => custom_endpoint(origin, url, environment)?,
            (None, Some(environment)) => TokenEndpoint::entur(environment),
            (None, None) => {
                return Err(
                    origin.missing(Setting::Environment, &todo(origin, Setting::Environment))
                )
            }
        };
        if environment.is_some() && client_name.is_none() {
            return Err(origin.missing(Setting::ClientName, &todo(origin, Setting::ClientName)));
        }
        if let Some(audience) = audience {
            endpoint = endpoint.audience(audience);
        }
        if let Some(encoding) = encoding {
            endpoint = endpoint.encoding(encoding);
        }
        Ok(Config {
            client_id,
            secret,
            environment,
            endpoint,
            client_name,
        })
    }
}

/// A custom token URL, treated as an Entur-style server (JSON body, 408 means expired).
fn custom_endpoint(
    origin: Origin,
    url: &str,
    environment: Option<Environment>,
) -> Result<TokenEndpoint, Error> {
    let name = origin.name(Setting::TokenUrl);
    const ABSOLUTE: &str =
        "it must be an absolute https:// URL with a host, e.g. https://partner.entur.org/oauth/token";
    let endpoint = TokenEndpoint::new(url).map_err(|_| match url.parse::<http::Uri>() {
        // Not echoed: the part before '@' is a user name and password.
        Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => Error::config(format!(
            "{name} holds a user name or password (user:password@host): leave them out; the client id and secret are sent as the token endpoint asks"
        )),
        // Not echoed either: the part before an '@' may be a user name and password.
        _ if url.contains('@') => Error::config(format!("{name} is not a valid URL: {ABSOLUTE}")),
        _ => origin.malformed(Setting::TokenUrl, url, ABSOLUTE),
    })?;
    let uri = endpoint.url();
    if uri.scheme_str() == Some("http") && !uri.host().is_some_and(is_loopback) {
        return Err(origin.malformed(
            Setting::TokenUrl,
            url,
            "plain http:// would send the client secret in cleartext: use https:// (http:// is accepted for localhost and 127.0.0.1 only)",
        ));
    }
    let endpoint = endpoint.encoding(BodyEncoding::Json).reauth_on_408(true);
    Ok(match environment {
        Some(environment) => endpoint.audience(environment.audience()),
        None => endpoint,
    })
}

/// `ENTUR_CLIENT_SECRET` or `ENTUR_CLIENT_SECRET_FILE`, exactly one of them.
/// `for_file`: a configuration file named no secret, and the messages say so.
fn secret_from_env(lookup: &mut Lookup<'_>, for_file: bool) -> Result<ClientSecret, Error> {
    let (value_var, file_var) = (Setting::ClientSecret.var(), Setting::ClientSecretFile.var());
    match (lookup(value_var)?, lookup(file_var)?) {
        (Some(_), Some(_)) => Err(Error::config(format!(
            "both {value_var} and {file_var} are set: set only one of them ({file_var} where the secret is mounted as a file)"
        ))),
        (Some(value), None) => match value.trim() {
            "" => Err(Origin::Env.empty(
                Setting::ClientSecret,
                &todo(Origin::Env, Setting::ClientSecret),
            )),
            secret => Ok(ClientSecret::new(secret)),
        },
        (None, Some(path)) => match path.trim() {
            "" => Err(Origin::Env.empty(
                Setting::ClientSecretFile,
                &todo(Origin::Env, Setting::ClientSecretFile),
            )),
            path => read_secret_file(Path::new(path), Origin::Env, Setting::ClientSecretFile),
        },
        (None, None) if for_file => Err(Error::config(format!(
            "no client secret: the configuration names none (`client_secret_file` or `client_secret_env`) and neither {value_var} nor {file_var} is set: set one of them"
        ))),
        (None, None) => Err(Error::config(format!(
            "no client secret: set {value_var} to the client secret Entur issued, or {file_var} to the path of a file holding it (as Kubernetes and Docker mount secrets)"
        ))),
    }
}

/// The secret in the file at `path`, which `setting` named.
fn read_secret_file(path: &Path, origin: Origin, setting: Setting) -> Result<ClientSecret, Error> {
    crate::oauth::credentials::read_secret_file(path, &origin.name(setting))
}

#[cfg(feature = "serde")]
mod file {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use serde::de::IgnoredAny;
    use serde::{Deserialize, Deserializer};

    use super::{optional, Config, Origin, Raw, Secret, Setting};
    use crate::error::Error;

    /// The fields of a configuration file, as written.
    #[derive(Deserialize)]
    struct ConfigFile {
        client_id: Option<String>,
        client_secret_file: Option<PathBuf>,
        client_secret_env: Option<String>,
        environment: Option<String>,
        audience: Option<String>,
        token_url: Option<String>,
        token_body: Option<String>,
        client_name: Option<String>,
        /// Any other field, refused: `client_secret`, or a misspelt setting. The values are
        /// skipped, never stored.
        #[serde(flatten)]
        unknown: BTreeMap<String, IgnoredAny>,
    }

    /// The fields a configuration file takes, as an unknown field's error lists them.
    const FIELDS: &str = "`client_id`, `client_secret_file`, `client_secret_env`, `environment`, `audience`, `token_url`, `token_body`, `client_name`";

    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    impl<'de> Deserialize<'de> for Config {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            ConfigFile::deserialize(deserializer)?
                .resolve()
                .map_err(serde::de::Error::custom)
        }
    }

    impl ConfigFile {
        fn resolve(self) -> Result<Config, Error> {
            let (secret_file, secret_env) = (self.client_secret_file, self.client_secret_env);
            let inline = self.unknown.contains_key("client_secret");
            if let Some(field) = self.unknown.keys().find(|f| *f != "client_secret") {
                return Err(Error::config(format!(
                    "unknown field `{}` in the configuration file: it takes {FIELDS}",
                    crate::error::sanitize(field, 100)
                )));
            }
            let raw = Raw {
                client_id: self.client_id,
                environment: self.environment,
                audience: self.audience,
                token_url: self.token_url,
                token_body: self.token_body,
                client_name: self.client_name,
            };
            raw.resolve(Origin::File, || {
                if inline {
                    return Err(Error::config(
                        "`client_secret` is refused in a configuration file: a secret written there ends up in version control, images and backups; put it in a file and set `client_secret_file` to its path, or in an environment variable and set `client_secret_env` to its name",
                    ));
                }
                match (secret_file, secret_env) {
                    (Some(_), Some(_)) => Err(Error::config(
                        "both `client_secret_file` and `client_secret_env` are set: set only one of them",
                    )),
                    (Some(path), None) if path.as_os_str().is_empty() => Err(Origin::File.empty(
                        Setting::ClientSecretFile,
                        &super::todo(Origin::File, Setting::ClientSecretFile),
                    )),
                    (Some(path), None) => Ok(Secret::File(path)),
                    (None, Some(name)) => {
                        let name = optional(Origin::File, Setting::ClientSecretEnv, Some(name))?
                            .unwrap_or_default();
                        if name.contains(['=', '\0']) || name.contains(char::is_whitespace) {
                            return Err(Origin::File.malformed(
                                Setting::ClientSecretEnv,
                                &name,
                                "it takes the name of an environment variable (no '=', spaces or NUL), e.g. ENTUR_CLIENT_SECRET",
                            ));
                        }
                        Ok(Secret::Var(name))
                    }
                    (None, None) => Ok(Secret::Environment),
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl FnMut(&str) -> Result<Option<String>, Error> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| Ok(vars.get(name).cloned())
    }

    fn config(secret: Secret) -> Config {
        Config {
            client_id: "id".into(),
            secret,
            environment: Some(Environment::Dev),
            endpoint: TokenEndpoint::entur(Environment::Dev),
            client_name: None,
        }
    }

    #[test]
    fn a_named_variable_is_read_at_build() {
        let config = config(Secret::Var("MY_SECRET".into()));
        let secret = config
            .secret_with(&mut lookup(&[("MY_SECRET", " s3cr3t-var \n")]))
            .unwrap();
        assert_eq!(secret.expose(), "s3cr3t-var");
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_named_variable_that_is_not_set_is_named() {
        let config = config(Secret::Var("MY_SECRET".into()));
        let error = config.secret_with(&mut lookup(&[])).unwrap_err();
        let text = error.report().to_string();
        assert!(
            text.contains(
                "`client_secret_env` names the environment variable MY_SECRET, which is not set"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_named_variable_that_is_empty_is_named() {
        let config = config(Secret::Var("MY_SECRET".into()));
        let error = config
            .secret_with(&mut lookup(&[("MY_SECRET", " ")]))
            .unwrap_err();
        assert!(
            error
                .report()
                .to_string()
                .contains("MY_SECRET, which is empty"),
            "{error}"
        );
    }

    #[test]
    fn a_file_without_a_secret_falls_back_to_the_environment() {
        let config = config(Secret::Environment);
        let secret = config
            .secret_with(&mut lookup(&[("ENTUR_CLIENT_SECRET", "from-env")]))
            .unwrap();
        assert_eq!(secret.expose(), "from-env");
        let error = config.secret_with(&mut lookup(&[])).unwrap_err();
        let text = error.report().to_string();
        assert!(
            text.contains("the configuration names none (`client_secret_file` or `client_secret_env`) and neither ENTUR_CLIENT_SECRET nor ENTUR_CLIENT_SECRET_FILE is set"),
            "{text}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_variable_that_is_not_utf8_is_named() {
        use std::os::unix::ffi::OsStringExt;

        let value = Err(std::env::VarError::NotUnicode(
            std::ffi::OsString::from_vec(vec![0xff, 0xfe]),
        ));
        let error = var_value("ENTUR_AUDIENCE", value).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("ENTUR_AUDIENCE is not valid UTF-8: set it to plain text"),
            "{error}"
        );
        assert_eq!(
            var_value("X", Err(std::env::VarError::NotPresent)).unwrap(),
            None
        );
    }

    #[test]
    fn every_setting_has_a_variable_and_a_field() {
        let all = [
            Setting::ClientId,
            Setting::ClientSecret,
            Setting::ClientSecretFile,
            Setting::ClientSecretEnv,
            Setting::Environment,
            Setting::Audience,
            Setting::TokenUrl,
            Setting::TokenBody,
            Setting::ClientName,
        ];
        for setting in all {
            assert_eq!(Origin::File.name(setting), format!("`{}`", setting.field()));
            assert!(!todo(Origin::Env, setting).is_empty());
        }
        assert_eq!(Origin::Env.name(Setting::ClientName), "ET_CLIENT_NAME");
    }
}
