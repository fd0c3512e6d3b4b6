//! Who holds the token: with `[http] token` set, writes need
//! `Authorization: Bearer <token>` (the scheme in any case), and so do reads
//! when `token_for_reads` is on. Health and metrics never do.
//!
//! The live stream alone may carry the token as `?access_token=`
//! (percent-encoded), because a browser's EventSource cannot set headers;
//! anywhere else a token in the URL would only end up in proxy logs and
//! browser history. Tokens are compared in constant time.
//!
//! Owns only the token; which pages may send requests at all is `guard.rs`.

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// Middleware for the API: the token from the `Authorization` header.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize(&state, &request, false)?;
    Ok(next.run(request).await)
}

/// Middleware for `/api/events`: the header, or `?access_token=`.
pub async fn require_token_or_query(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize(&state, &request, true)?;
    Ok(next.run(request).await)
}

fn authorize(state: &AppState, request: &Request, query_allowed: bool) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    if is_read && !state.token_for_reads {
        return Ok(());
    }
    let from_query = query_allowed.then(|| query_token(request)).flatten();
    let offered = bearer(request.headers()).or(from_query.as_deref());
    match offered {
        Some(offered) if token_matches(offered, token.expose()) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
        )),
    }
}

/// The credentials of `Authorization: Bearer <token>`; the scheme is
/// case-insensitive (RFC 9110 §11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim_matches(' '))
        .filter(|credentials| !credentials.is_empty())
}

/// The query of `/api/events`: only the token is read.
#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// `?access_token=`, percent-decoded (EventSource URLs are built with
/// `encodeURIComponent`, so `+ / =` arrive as `%2B %2F %3D`).
fn query_token(request: &Request) -> Option<String> {
    Query::<TokenQuery>::try_from_uri(request.uri())
        .ok()?
        .0
        .access_token
}

/// Constant time for tokens of the same length, so the time taken does not
/// tell how much of a guess was right.
fn token_matches(offered: &str, token: &str) -> bool {
    offered.as_bytes().ct_eq(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::HeaderValue;

    use super::*;

    fn with_authorization(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "Bearer  abc "] {
            assert_eq!(bearer(&with_authorization(value)), Some("abc"), "{value}");
        }
        for value in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc"] {
            assert_eq!(bearer(&with_authorization(value)), None, "{value}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn the_query_token_is_percent_decoded() {
        let request = |uri: &str| Request::builder().uri(uri).body(Body::empty()).unwrap();
        assert_eq!(
            query_token(&request("/api/events?access_token=a%2Bb%2Fc%3D%3D")).as_deref(),
            Some("a+b/c==")
        );
        assert_eq!(
            query_token(&request("/api/events?x=1&access_token=plain")).as_deref(),
            Some("plain")
        );
        assert_eq!(query_token(&request("/api/events")), None);
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("secret", "secret"));
        assert!(!token_matches("secret", "secreT"));
        assert!(!token_matches("secret", "secret2"));
        assert!(!token_matches("", "x"));
    }
}
