//! The HTTP client every request to the polled controller goes through (the
//! polls and the status posts): its time limits, the headers that name the
//! worker (`X-Worker-Group`, `X-Worker-Id`, `User-Agent`), the configured
//! auth, and TLS on rustls with the `ring` provider (`transport::tls`). It
//! builds the client; sending is the callers' business.
//!
//! Redirects are not followed: a controller that moved says so with a 3xx,
//! which the worker logs, rather than having statuses posted (or turned into
//! GETs) wherever a redirect points. Proxies come from the usual environment
//! variables (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use super::PollError;
use crate::config::{PollAuth, PollConfig, TlsConfig, WorkerConfig};
use crate::transport::tls::{ServerCheck, client_config, plain_only};

/// Names this worker's group on every request.
pub const WORKER_GROUP: HeaderName = HeaderName::from_static("x-worker-group");
/// Names this worker on every request.
pub const WORKER_ID: HeaderName = HeaderName::from_static("x-worker-id");
/// `User-Agent` of every request.
const USER_AGENT: &str = concat!("ansible-worker/", env!("CARGO_PKG_VERSION"));

/// The client for the controller `poll` names, on behalf of `worker`.
pub fn build(poll: &PollConfig, worker: &WorkerConfig) -> Result<reqwest::Client, PollError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        WORKER_GROUP,
        header_value("worker.group_name", &worker.group_name)?,
    );
    headers.insert(
        WORKER_ID,
        header_value("worker.worker_id", &worker.worker_id)?,
    );
    if let Some(authorization) = authorization(&poll.auth)? {
        headers.insert(AUTHORIZATION, authorization);
    }
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .default_headers(headers)
        .connect_timeout(poll.connect_timeout)
        .timeout(poll.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(tls(poll)?)
        .build()
        .map_err(PollError::Client)
}

/// A header carrying `value` (a config value; it may be UTF-8, which HTTP
/// carries as opaque bytes, but no control characters).
fn header_value(key: &'static str, value: &str) -> Result<HeaderValue, PollError> {
    HeaderValue::from_bytes(value.as_bytes()).map_err(|_| PollError::Header(key))
}

/// The `Authorization` header of `auth`, marked sensitive so that no debug
/// output of the client shows it.
fn authorization(auth: &PollAuth) -> Result<Option<HeaderValue>, PollError> {
    let (key, text) = match auth {
        PollAuth::None => return Ok(None),
        PollAuth::Bearer(token) => ("poll.bearer_token", format!("Bearer {}", token.expose())),
        PollAuth::Basic { username, password } => {
            let pair = format!("{username}:{}", password.expose());
            ("poll.password", format!("Basic {}", STANDARD.encode(pair)))
        }
    };
    // The value is never shown: the key alone names the problem.
    let mut value = HeaderValue::from_str(&text).map_err(|_| PollError::Header(key))?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// The TLS settings: the `poll.tls_*` keys for an `https://` controller
/// (any certificate accepted with `tls_insecure`, said loudly), none for a
/// plain `http://` one.
fn tls(poll: &PollConfig) -> Result<rustls::ClientConfig, PollError> {
    if !poll.base_url.starts_with("https://") {
        return Ok(plain_only());
    }
    let check = if poll.tls_insecure {
        tracing::warn!(
            "poll.tls_insecure is set: the controller's TLS certificate is NOT checked, \
             so anyone on the path can pose as the controller, hand out tasks and read \
             their statuses; use poll.tls_ca_cert instead outside a lab"
        );
        ServerCheck::AcceptAny
    } else {
        ServerCheck::Verify
    };
    let files = TlsConfig {
        ca_cert: poll.tls_ca_cert.clone(),
        client_auth: poll.tls_client_auth.clone(),
    };
    Ok(client_config(&files, check, "poll")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn basic_auth_is_base64_of_user_colon_password_and_sensitive() {
        let auth = PollAuth::Basic {
            username: "worker".into(),
            password: Secret::new("s3cret:pass"),
        };
        let value = authorization(&auth).unwrap().unwrap();
        assert_eq!(value.to_str().unwrap(), "Basic d29ya2VyOnMzY3JldDpwYXNz");
        assert!(value.is_sensitive());
        let bearer = authorization(&PollAuth::Bearer(Secret::new("t0k"))).unwrap();
        assert_eq!(bearer.unwrap().to_str().unwrap(), "Bearer t0k");
        assert!(authorization(&PollAuth::None).unwrap().is_none());
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused_without_showing_it() {
        let error = authorization(&PollAuth::Bearer(Secret::new("line\nbreak")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("poll.bearer_token"), "{error}");
        assert!(!error.contains("line"), "{error}");
    }

    #[test]
    fn group_names_may_be_utf8_but_not_control_characters() {
        assert!(header_value("worker.group_name", "läb").is_ok());
        assert!(header_value("worker.group_name", "a\u{7}b").is_err());
    }
}
