//! How the HTTP side answers a request it will not serve: always
//! `{"error": "..."}` as JSON, whoever refused it.
//!
//! Handlers return [`ApiError`]. Answers the handlers never see (a path no
//! route serves, a method a route does not take) come from [`not_found`] and
//! [`method_not_allowed`]; what axum's extractors and tower's layers answer on
//! their own (a body over the limit, malformed JSON or query, the request
//! timeout) is rewritten into the same shape by [`json_errors`]. A client
//! therefore parses one format for every error, and a 401 always names the
//! scheme it wants (`WWW-Authenticate: Bearer`).

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::header::{self, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Most of an error body read when rewriting it: axum's rejection texts are
/// one line, and nothing larger is worth showing.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// Characters of a request path echoed in a 404/405 message.
const MAX_ECHOED_PATH: usize = 200;

/// An API error: a status and a message for the client, as JSON. Messages
/// never carry internals.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with `status` and a client-facing `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110: a 401 names the scheme that would be accepted.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The router's fallback: 404 for a path no route serves.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such resource: {method} {}", shown_path(&uri)),
    )
}

/// The routes' method fallback: 405 for a method a path does not take (axum
/// adds the `Allow` header).
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", shown_path(&uri)),
    )
}

/// The path only: a query string may carry `access_token`.
fn shown_path(uri: &Uri) -> String {
    uri.path().chars().take(MAX_ECHOED_PATH).collect()
}

/// Middleware: rewrites an error answer that is not JSON yet (axum's
/// extractor rejections are text, the timeout's 408 is empty) into
/// `{"error": ...}`, keeping its status and other headers. Must sit outside
/// the layers that produce such answers and inside compression, so the body
/// it reads is plain text.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = to_bytes(body, MAX_ERROR_BODY)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        default_message(status)
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = json!({ "error": message }).to_string();
    Response::from_parts(parts, Body::from(body))
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"))
}

/// A message for an error that came without one.
fn default_message(status: StatusCode) -> String {
    match status {
        StatusCode::REQUEST_TIMEOUT => "the request was not answered in time".to_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::middleware;
    use axum::routing::{get, post};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;

    async fn answer(router: Router, request: Request) -> (StatusCode, Option<String>, Value) {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let allow = response
            .headers()
            .get(header::ALLOW)
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json",
            "{status}"
        );
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, allow, serde_json::from_slice(&body).unwrap())
    }

    fn request(method: &str, uri: &str, content_type: &str, body: &str) -> Request {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn extractor_rejections_become_json_with_their_status() {
        async fn takes_json(_: axum::Json<Value>) {}
        let router = Router::new()
            .route("/json", post(takes_json))
            .layer(middleware::from_fn(json_errors));
        for (content_type, body, status) in [
            ("text/plain", "{}", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ("application/json", "{", StatusCode::BAD_REQUEST),
        ] {
            let (got, _, body) =
                answer(router.clone(), request("POST", "/json", content_type, body)).await;
            assert_eq!(got, status);
            assert!(!body["error"].as_str().unwrap().is_empty(), "{body}");
        }
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_json_and_keep_allow() {
        let router = Router::new()
            .route("/only-get", get(|| async {}))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn(json_errors));
        let (status, _, body) = answer(
            router.clone(),
            request("GET", "/nowhere?access_token=secret", "text/plain", ""),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no such resource: GET /nowhere");
        let (status, allow, body) =
            answer(router, request("DELETE", "/only-get", "text/plain", "")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"], "DELETE is not allowed on /only-get");
        assert_eq!(allow.as_deref(), Some("GET,HEAD"));
    }

    #[test]
    fn unauthorized_names_the_bearer_scheme() {
        let response = ApiError::new(StatusCode::UNAUTHORIZED, "token").into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let response = ApiError::new(StatusCode::FORBIDDEN, "no").into_response();
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
