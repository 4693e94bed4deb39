//! A typed client for the controller's Cloud Foundry v2 API: joins paths to the target,
//! sends the bearer token, refreshes it once on a 401, and turns CF error bodies into errors
//! that carry the server's own description.

use crate::cf::{Info, Page, Resource, TokenResponse};
use crate::config::{ConfigFile, Session};
use reqwest::header::AUTHORIZATION;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Mutex;
use std::time::Duration;
use strato_core::ApiError;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a CF error body.
    #[error("{}", .0.description)]
    Api(ApiError),
    /// The server answered with an error that is not in CF's shape.
    #[error("{url} answered HTTP {status}{}", body_suffix(.body))]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("cannot reach {url}: {detail}. Check the target (`strato target`) and that the server is running")]
    Transport { url: String, detail: String },
    #[error("not logged in to {0}; run `strato login`")]
    NotLoggedIn(String),
    #[error("your session on {0} has expired; run `strato login` again")]
    SessionExpired(String),
    #[error("unexpected answer from {url}: {detail}")]
    Decode { url: String, detail: String },
}

fn body_suffix(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        String::new()
    } else {
        format!(": {}", truncate(body, 300))
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

impl ClientError {
    /// The CF `error_code` (e.g. `CF-NotStaged`), when the server sent one.
    pub fn cf_code(&self) -> Option<&str> {
        match self {
            ClientError::Api(e) => Some(&e.error_code),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(e) => Some(e.status),
            ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The full text of an error and its causes (reqwest's own message is terse).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[derive(Clone, Debug, Default)]
struct Tokens {
    access: Option<String>,
    refresh: Option<String>,
}

/// A connection to one target, optionally logged in.
pub struct Api {
    http: Client,
    trust: crate::trust::Trust,
    target: String,
    tokens: Mutex<Tokens>,
    store: Option<ConfigFile>,
}

/// Builds the HTTP client with `trust` (see [`crate::trust`]).
fn http_client(trust: &crate::trust::Trust) -> Result<Client, ClientError> {
    let builder = Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("strato/", env!("CARGO_PKG_VERSION")));
    let builder = trust.apply(builder).map_err(|e| ClientError::Transport {
        url: String::new(),
        detail: format!("{e:#}"),
    })?;
    builder.build().map_err(|e| ClientError::Transport {
        url: String::new(),
        detail: error_chain(&e),
    })
}

/// A WebSocket over TCP or TLS.
pub type WsStream = tokio_tungstenite::WebSocketStream<Box<dyn WsIo>>;

/// The byte streams a [`WsStream`] runs on.
pub trait WsIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> WsIo for T {}

impl Api {
    /// A client for `target` without a session, trusting what `session` (the target's
    /// saved state, possibly empty) trusts.
    pub fn anonymous(target: &str, session: &Session) -> Result<Self, ClientError> {
        Self::with_trust(target, crate::trust::Trust::of(session))
    }

    /// A client for `target` without a session, trusting `trust`.
    pub fn with_trust(target: &str, trust: crate::trust::Trust) -> Result<Self, ClientError> {
        Ok(Api {
            http: http_client(&trust)?,
            trust,
            target: crate::config::trim_url(target),
            tokens: Mutex::new(Tokens::default()),
            store: None,
        })
    }

    /// A client for `target` using `session`'s tokens; refreshed tokens are saved to `store`.
    pub fn with_session(
        target: &str,
        session: &Session,
        store: ConfigFile,
    ) -> Result<Self, ClientError> {
        let api = Self::anonymous(target, session)?;
        *api.lock_tokens() = Tokens {
            access: session.access_token.clone(),
            refresh: session.refresh_token.clone(),
        };
        Ok(Api {
            store: Some(store),
            ..api
        })
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `path` joined to the target, or `path` itself when it is already absolute.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else if path.starts_with('/') {
            format!("{}{}", self.target, path)
        } else {
            format!("{}/{}", self.target, path)
        }
    }

    /// A WebSocket handshake request for `path` (`ws://` or `wss://` after the target's
    /// scheme) carrying the bearer token. Make an ordinary API call first, so an expired
    /// token has been refreshed.
    pub fn websocket_request(
        &self,
        path: &str,
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = self.url(path);
        let ws_url = match url.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}"),
            Some((_, rest)) => format!("ws://{rest}"),
            None => url.clone(),
        };
        let token = self
            .lock_tokens()
            .access
            .clone()
            .ok_or_else(|| ClientError::NotLoggedIn(self.target.clone()))?;
        let mut request =
            ws_url
                .as_str()
                .into_client_request()
                .map_err(|e| ClientError::Transport {
                    url: ws_url.clone(),
                    detail: e.to_string(),
                })?;
        let value = format!("bearer {token}")
            .parse()
            .map_err(|_| ClientError::NotLoggedIn(self.target.clone()))?;
        request.headers_mut().insert(AUTHORIZATION, value);
        Ok(request)
    }

    /// Opens a WebSocket for `request` (from [`websocket_request`](Self::websocket_request)),
    /// over TLS for `wss://` with this target's trust.
    pub async fn websocket_connect(
        &self,
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<
        (
            WsStream,
            tokio_tungstenite::tungstenite::handshake::client::Response,
        ),
        tokio_tungstenite::tungstenite::Error,
    > {
        use tokio_tungstenite::tungstenite::Error as WsError;
        let uri = request.uri().clone();
        let tls = uri.scheme_str() == Some("wss");
        let host = uri
            .host()
            .ok_or(WsError::Url(
                tokio_tungstenite::tungstenite::error::UrlError::NoHostName,
            ))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn WsIo> = if tls {
            let config = self
                .trust
                .rustls_config()
                .map_err(|e| WsError::Io(std::io::Error::other(format!("{e:#}"))))?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| WsError::Io(std::io::Error::other(e.to_string())))?;
            Box::new(
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?,
            )
        } else {
            Box::new(tcp)
        };
        tokio_tungstenite::client_async(request, stream).await
    }

    /// Sends a request built by `build` with the bearer token; on a 401 it refreshes the token
    /// once and sends it again. Any status comes back as a response.
    pub async fn send_raw(
        &self,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, ClientError> {
        let token = self.lock_tokens().access.clone();
        let Some(token) = token else {
            return Err(ClientError::NotLoggedIn(self.target.clone()));
        };
        let response = self
            .dispatch(build(&self.http).header(AUTHORIZATION, format!("bearer {token}")))
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED || self.lock_tokens().refresh.is_none() {
            return Ok(response);
        }
        let token = self.refresh().await?;
        self.dispatch(build(&self.http).header(AUTHORIZATION, format!("bearer {token}")))
            .await
    }

    /// Sends a request once with the bearer token (for bodies that can be read only
    /// once, such as a stream); a non-2xx status is an error.
    pub async fn send_once(
        &self,
        build: impl FnOnce(&Client) -> RequestBuilder,
    ) -> Result<Response, ClientError> {
        let token = self
            .lock_tokens()
            .access
            .clone()
            .ok_or_else(|| ClientError::NotLoggedIn(self.target.clone()))?;
        let response = self
            .dispatch(build(&self.http).header(AUTHORIZATION, format!("bearer {token}")))
            .await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(ClientError::SessionExpired(self.target.clone()));
        }
        check(response).await
    }

    /// Sends a request without a token; any status comes back as a response.
    pub async fn send_anonymous(
        &self,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, ClientError> {
        self.dispatch(build(&self.http)).await
    }

    /// Like [`send_raw`](Self::send_raw), but a non-2xx status is an error.
    pub async fn send(
        &self,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, ClientError> {
        let response = self.send_raw(build).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(ClientError::SessionExpired(self.target.clone()));
        }
        check(response).await
    }

    async fn dispatch(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let request = request.build().map_err(|e| ClientError::Transport {
            url: self.target.clone(),
            detail: error_chain(&e),
        })?;
        let url = request.url().to_string();
        self.http
            .execute(request)
            .await
            .map_err(|e| ClientError::Transport {
                url,
                detail: error_chain(&e),
            })
    }

    /// `GET path` decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        decode(self.send(|c| c.get(&url)).await?).await
    }

    /// `GET path?query` decoded as `T`; repeated keys (several `q`) are allowed.
    pub async fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        decode(self.send(|c| c.get(&url).query(query)).await?).await
    }

    /// Every resource of a list, following `next_url`.
    pub async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<Resource<T>>, ClientError> {
        let mut page: Page<T> = self.get_query(path, query).await?;
        let mut all = std::mem::take(&mut page.resources);
        let mut pages = 1;
        while let Some(next) = page.next_url.take().filter(|n| !n.is_empty()) {
            pages += 1;
            if pages > 1000 {
                break;
            }
            page = self.get(&next).await?;
            all.append(&mut page.resources);
        }
        Ok(all)
    }

    /// `POST path` with a JSON body.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        decode(self.request(Method::POST, path, Some(body)).await?).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        decode(self.request(Method::PUT, path, Some(body)).await?).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.request(Method::DELETE, path, None).await.map(drop)
    }

    /// Any method with an optional JSON body; the response is returned undecoded.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, ClientError> {
        let url = self.url(path);
        self.send(|c| {
            let r = c.request(method.clone(), &url);
            match body {
                Some(b) => r.json(b),
                None => r,
            }
        })
        .await
    }

    /// `GET /v2/info`, which needs no token.
    pub async fn info(&self) -> Result<Info, ClientError> {
        let url = self.url("/v2/info");
        let response = self
            .dispatch(self.http.get(&url).timeout(Duration::from_secs(15)))
            .await?;
        decode(check(response).await?).await
    }

    /// Logs in with the password grant; the tokens are kept for the following calls.
    pub async fn password_grant(
        &self,
        user: &str,
        password: &str,
    ) -> Result<TokenResponse, ClientError> {
        let form = [
            ("grant_type", "password"),
            ("username", user),
            ("password", password),
        ];
        let tokens = self.token_request(&form).await?;
        *self.lock_tokens() = Tokens {
            access: Some(tokens.access_token.clone()),
            refresh: tokens.refresh_token.clone(),
        };
        Ok(tokens)
    }

    /// Trades the refresh token for a new access token and saves it.
    async fn refresh(&self) -> Result<String, ClientError> {
        let refresh = self
            .lock_tokens()
            .refresh
            .clone()
            .ok_or_else(|| ClientError::SessionExpired(self.target.clone()))?;
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ];
        let tokens = match self.token_request(&form).await {
            Ok(t) => t,
            Err(ClientError::Transport { url, detail }) => {
                return Err(ClientError::Transport { url, detail })
            }
            Err(_) => return Err(ClientError::SessionExpired(self.target.clone())),
        };
        let new_refresh = tokens.refresh_token.clone().or(Some(refresh));
        *self.lock_tokens() = Tokens {
            access: Some(tokens.access_token.clone()),
            refresh: new_refresh.clone(),
        };
        if let Some(store) = &self.store {
            let target = self.target.clone();
            let access = tokens.access_token.clone();
            // Failing to save only costs another refresh next time.
            let _ = store.update(|c| {
                let session = c.targets.entry(target).or_default();
                session.access_token = Some(access);
                session.refresh_token = new_refresh;
            });
        }
        Ok(tokens.access_token)
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenResponse, ClientError> {
        let info = self.info().await?;
        let base = if info.token_endpoint.trim().is_empty() {
            self.target.clone()
        } else {
            crate::config::trim_url(&info.token_endpoint)
        };
        let url = format!("{base}/oauth/token");
        let request = self
            .http
            .post(&url)
            .basic_auth("cf", Some(""))
            .header("Accept", "application/json")
            .form(form);
        let response = self.dispatch(request).await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(token_error(status.as_u16(), &body));
        }
        decode(response).await
    }
}

/// A UAA error (`{error, error_description}`) or a CF one, as an [`ClientError::Api`].
fn token_error(status: u16, body: &str) -> ClientError {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_string);
    let description = text("error_description")
        .or_else(|| text("description"))
        .unwrap_or_else(|| format!("the server refused the login (HTTP {status})"));
    let error_code = text("error_code")
        .or_else(|| text("error"))
        .unwrap_or_default();
    ClientError::Api(ApiError {
        status,
        code: 0,
        description: format!("login failed: {description}"),
        error_code,
    })
}

/// Passes a 2xx response through; turns anything else into an error.
pub async fn check(response: Response) -> Result<Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let url = response.url().to_string();
    let body = response.text().await.unwrap_or_default();
    Err(error_from_body(url, status.as_u16(), &body))
}

/// Decodes a CF error body, or keeps the raw text when it is not one.
pub fn error_from_body(url: String, status: u16, body: &str) -> ClientError {
    match serde_json::from_str::<ApiError>(body) {
        Ok(mut e) if !e.description.is_empty() => {
            e.status = status;
            ClientError::Api(e)
        }
        _ => ClientError::Http {
            url,
            status,
            body: body.to_string(),
        },
    }
}

/// A JSON body as `T`; an empty body reads as `null`.
pub async fn decode<T: DeserializeOwned>(response: Response) -> Result<T, ClientError> {
    let url = response.url().to_string();
    let bytes = response.bytes().await.map_err(|e| ClientError::Transport {
        url: url.clone(),
        detail: error_chain(&e),
    })?;
    let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: url.clone(),
            detail: format!(
                "not JSON ({e}): {}",
                truncate(&String::from_utf8_lossy(&bytes), 200)
            ),
        })?
    };
    serde_json::from_value(value).map_err(|e| ClientError::Decode {
        url,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cf_error_bodies_keep_their_description_and_code() {
        let body = r#"{"code":170002,"description":"App has not finished staging","error_code":"CF-NotStaged"}"#;
        let err = error_from_body("u".into(), 400, body);
        assert_eq!(err.cf_code(), Some("CF-NotStaged"));
        assert_eq!(err.status(), Some(400));
        assert_eq!(err.to_string(), "App has not finished staging");
    }

    #[test]
    fn other_error_bodies_are_shown_raw() {
        let err = error_from_body("http://x/v2/apps".into(), 502, "Bad Gateway");
        assert_eq!(err.cf_code(), None);
        assert_eq!(
            err.to_string(),
            "http://x/v2/apps answered HTTP 502: Bad Gateway"
        );
    }

    #[test]
    fn uaa_errors_read_well() {
        let err = token_error(
            401,
            r#"{"error":"unauthorized","error_description":"Bad credentials"}"#,
        );
        assert_eq!(err.to_string(), "login failed: Bad credentials");
        assert_eq!(err.cf_code(), Some("unauthorized"));
    }

    #[test]
    fn paths_join_the_target() {
        let api = Api::anonymous("http://h:8080/", &Session::default()).unwrap();
        assert_eq!(api.url("/v2/info"), "http://h:8080/v2/info");
        assert_eq!(api.url("v2/info"), "http://h:8080/v2/info");
        assert_eq!(api.url("https://other/x"), "https://other/x");
    }
}
