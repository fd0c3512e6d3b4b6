//! What the HTTP transport's polls and posts share: the URL of a task's
//! status, the wait a `Retry-After` header asks for, and a short account of
//! a failed request and of the controller's URL for the log.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

pub use crate::transport::backoff::Backoff;

/// Longest `Retry-After` honoured: a controller asking for more is waited
/// for this long, then asked again.
pub const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(300);

/// `<base_url>/tasks/<task_id>/status`. A task id is `A-Z a-z 0-9 . _ -`,
/// which needs no escaping in a path; but the ids `.` and `..` would be
/// resolved as dot segments (even percent-encoded, by the URL standard), so
/// `..`'s status would go to `<base_url>/status`: they have no status URL
/// (`None`), and the HTTP transport refuses them.
pub fn status_url(base_url: &str, task_id: &str) -> Option<String> {
    match task_id {
        "." | ".." => None,
        _ => Some(format!("{base_url}/tasks/{task_id}/status")),
    }
}

/// The wait a `Retry-After` header asks for (delay-seconds or an HTTP date),
/// at most [`LONGEST_RETRY_AFTER`]; `None` without a readable one.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(wait.min(LONGEST_RETRY_AFTER))
}

/// A failed request in a few words: what a user needs to act on, without the
/// URL's query or any header.
pub fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "the answer broke off"
    } else {
        "request failed"
    };
    // The innermost cause (e.g. "Connection refused (os error 111)").
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    format!("{kind}: {cause}")
}

/// `base_url` as it may be shown (dashboard, logs): without user name,
/// password, query or fragment, which may carry credentials.
pub fn shown_url(base_url: &str) -> String {
    match reqwest::Url::parse(base_url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => "(an unreadable poll.base_url)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_url_carries_no_credentials() {
        assert_eq!(
            shown_url("https://user:s3cret@ctl.example:8443/api?token=t0k#x"),
            "https://ctl.example:8443/api"
        );
        assert_eq!(shown_url("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert!(!shown_url("not a url with s3cret").contains("s3cret"));
    }

    #[test]
    fn dot_segments_cannot_leave_the_tasks_path() {
        let base = "http://controller:8000/api";
        assert_eq!(
            status_url(base, "build-1.2").unwrap(),
            "http://controller:8000/api/tasks/build-1.2/status"
        );
        assert_eq!(status_url(base, ".."), None);
        assert_eq!(status_url(base, "."), None);
        for id in ["...", "a..b", "-", "_.", ".a"] {
            let url = reqwest::Url::parse(&status_url(base, id).unwrap()).unwrap();
            let segments: Vec<&str> = url.path_segments().unwrap().collect();
            assert_eq!(segments, ["api", "tasks", id, "status"], "{id}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, value.parse().unwrap());
            headers
        };
        assert_eq!(retry_after(&HeaderMap::new()), None);
        assert_eq!(retry_after(&headers("7")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&headers("soon")), None);
        assert_eq!(retry_after(&headers("999999")), Some(LONGEST_RETRY_AFTER));
        let in_a_minute = (chrono::Utc::now() + chrono::Duration::seconds(60))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let wait = retry_after(&headers(&in_a_minute)).unwrap();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        let past = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(retry_after(&headers(past)), Some(Duration::ZERO));
    }
}
