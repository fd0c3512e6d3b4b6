//! Refuses requests a web page on another origin could make a browser send:
//! the defence against cross-site request forgery and DNS rebinding, which
//! holds with or without a token.
//!
//! Three rules, checked before routing and before the token (403 with a JSON
//! reason when one fails):
//! - **Host** (every request, health and metrics included): an IP literal,
//!   `localhost`, or a name in `[http] allowed_hosts`. A rebinding page
//!   reaches this server under the attacker's own name, which is in no list.
//! - **Origin** (every method but GET, HEAD, OPTIONS): when the browser names
//!   the page's origin, it must be this server's (`Origin: null` is not);
//!   `Sec-Fetch-Site: cross-site` or `same-site` is refused too. Clients that
//!   send neither (curl, controllers) pass.
//! - **Content type** (POST): `application/json`. A page can POST a form or
//!   plain text to any server without asking; JSON needs a CORS preflight,
//!   which this server never grants.
//!
//! Owns only these decisions; who holds the token is `auth.rs`'s business.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use thiserror::Error;

use super::{ApiError, AppState};

/// Characters of a refused header value echoed back.
const MAX_ECHOED: usize = 100;

/// Why a request was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GuardRefusal {
    /// No `Host` header (and no host in the request line).
    #[error("the request names no Host")]
    NoHost,
    /// A host name this server does not answer to.
    #[error(
        "Host {0:?} is not served here: use an IP address or localhost, \
         or add the name to [http] allowed_hosts"
    )]
    ForeignHost(String),
    /// A state-changing request from a page of another origin.
    #[error("cross-origin request refused: Origin {0:?} is not this server")]
    CrossOrigin(String),
    /// A state-changing request the browser marks as coming from another site.
    #[error("cross-site request refused (Sec-Fetch-Site: {0})")]
    CrossSite(String),
    /// A POST whose body is not declared as JSON.
    #[error("a POST needs Content-Type: application/json")]
    NotJson,
}

/// Middleware: applies the three rules with this server's `allowed_hosts`.
pub async fn check(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let host_in_line = request.uri().authority().map(|a| a.as_str());
    if let Err(refusal) = verdict(
        request.method(),
        request.headers(),
        host_in_line,
        &state.allowed_hosts,
    ) {
        tracing::debug!(method = %request.method(), path = %request.uri().path(), "refused: {refusal}");
        return Err(ApiError::new(StatusCode::FORBIDDEN, refusal.to_string()));
    }
    Ok(next.run(request).await)
}

/// The decision for one request: its method, headers, the host of an
/// absolute-form request line (if any), and the configured extra names.
fn verdict(
    method: &Method,
    headers: &HeaderMap,
    host_in_line: Option<&str>,
    allowed_hosts: &[String],
) -> Result<(), GuardRefusal> {
    let text = |name| {
        headers
            .get(name)
            .map(|value| value.to_str().unwrap_or("\u{fffd}"))
    };
    let host_header = text(header::HOST);
    let own = host_header.or(host_in_line).ok_or(GuardRefusal::NoHost)?;
    for named in [host_header, host_in_line].into_iter().flatten() {
        let allowed = Authority::parse(named).is_some_and(|a| a.is_allowed(allowed_hosts));
        if !allowed {
            return Err(GuardRefusal::ForeignHost(echo(named)));
        }
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(site) = text(SEC_FETCH_SITE)
        && (site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site"))
    {
        return Err(GuardRefusal::CrossSite(echo(site)));
    }
    if let Some(origin) = text(header::ORIGIN)
        && !same_origin(origin, own)
    {
        return Err(GuardRefusal::CrossOrigin(echo(origin)));
    }
    if *method == Method::POST && !text(header::CONTENT_TYPE).is_some_and(is_json) {
        return Err(GuardRefusal::NotJson);
    }
    Ok(())
}

/// Sent by browsers with every request (the `http` crate has no constant).
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

fn echo(value: &str) -> String {
    value.chars().take(MAX_ECHOED).collect()
}

/// `application/json`, with or without parameters such as `charset`.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of a request
/// that came with `Host: own`. The scheme is not compared: behind a TLS proxy
/// the page is `https` while this server speaks plain HTTP; a port missing
/// on either side is the origin scheme's default.
fn same_origin(origin: &str, own: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false; // `null` and anything else that is no origin
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let (Some(page), Some(this)) = (Authority::parse(rest), Authority::parse(own)) else {
        return false;
    };
    page.host == this.host && page.port.unwrap_or(default_port) == this.port.unwrap_or(default_port)
}

/// The host and port of a `Host` header or an origin's authority.
#[derive(Debug, PartialEq, Eq)]
struct Authority {
    /// Lower case; an IPv6 literal without its brackets; no trailing dot.
    host: String,
    port: Option<u16>,
}

impl Authority {
    /// `host`, `host:port`, `[v6]` or `[v6]:port`; None for anything else
    /// (user info, a path, a bare IPv6 address, an empty host).
    fn parse(value: &str) -> Option<Self> {
        let (host, port) = if let Some(rest) = value.strip_prefix('[') {
            let (v6, after) = rest.split_once(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (v6, port)
        } else {
            match value.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (value, None),
            }
        };
        let port = match port {
            None => None,
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                Some(digits.parse().ok()?)
            }
            Some(_) => return None,
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        // `_` is no DNS host name character, but Compose service names have it.
        let name_like = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
        if host.is_empty() || !host.chars().all(name_like) {
            return None;
        }
        Some(Authority { host, port })
    }

    fn is_allowed(&self, allowed_hosts: &[String]) -> bool {
        self.host.parse::<IpAddr>().is_ok()
            || self.host == "localhost"
            || allowed_hosts.contains(&self.host)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn authority(host: &str, port: Option<u16>) -> Option<Authority> {
        Some(Authority {
            host: host.to_owned(),
            port,
        })
    }

    #[test]
    fn hosts_parse_with_ports_and_ipv6_literals() {
        assert_eq!(Authority::parse("127.0.0.1"), authority("127.0.0.1", None));
        assert_eq!(
            Authority::parse("127.0.0.1:8080"),
            authority("127.0.0.1", Some(8080))
        );
        assert_eq!(Authority::parse("[::1]:8080"), authority("::1", Some(8080)));
        assert_eq!(Authority::parse("[::1]"), authority("::1", None));
        assert_eq!(
            Authority::parse("LocalHost.:80"),
            authority("localhost", Some(80))
        );
        for bad in [
            "",
            ":80",
            "::1",
            "[::1",
            "[::1]x",
            "[nope]:80",
            "host:",
            "host:x",
            "host:99999",
            "a@host",
            "host/path",
            "a b",
            "[::1]:",
        ] {
            assert_eq!(Authority::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_ip_literals_localhost_and_listed_names_are_served() {
        let listed = [
            "ansible.lab.example".to_owned(),
            "ansible_worker".to_owned(),
        ];
        for good in [
            "ansible_worker:8080",
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST",
            "ansible.lab.example:8080",
            "Ansible.Lab.Example.",
        ] {
            let parsed = Authority::parse(good).unwrap();
            assert!(parsed.is_allowed(&listed), "{good}");
        }
        for foreign in [
            "attacker.rebind.example",
            "lab.example",
            "ansible.lab.example.attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "other_worker",
        ] {
            let parsed = Authority::parse(foreign).unwrap();
            assert!(!parsed.is_allowed(&listed), "{foreign}");
        }
    }

    #[test]
    fn an_origin_is_compared_with_the_requests_own_host() {
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_origin("http://[::1]:8080", "[::1]:8080"));
        assert!(same_origin("HTTP://LocalHost:8080", "localhost:8080"));
        assert!(same_origin("http://localhost", "localhost:80"));
        assert!(same_origin(
            "https://ansible.lab.example",
            "ansible.lab.example"
        ));
        for (origin, own) in [
            ("null", "127.0.0.1:8080"),
            ("http://localhost:8080", "127.0.0.1:8080"),
            ("http://127.0.0.1:3000", "127.0.0.1:8080"),
            ("http://127.0.0.1", "127.0.0.1:8080"),
            ("https://ansible.lab.example", "ansible.lab.example:80"),
            ("file://", "127.0.0.1:8080"),
            ("chrome-extension://abc", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080/path", "127.0.0.1:8080"),
        ] {
            assert!(!same_origin(origin, own), "{origin} vs {own}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    header::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn writes_need_this_origin_and_a_json_body() {
        let post = |pairs: &[(&'static str, &'static str)]| {
            verdict(&Method::POST, &headers(pairs), None, &[])
        };
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(post(&[host, json]), Ok(()));
        assert_eq!(
            post(&[host, ("content-type", "Application/JSON; charset=utf-8")]),
            Ok(())
        );
        assert_eq!(
            post(&[
                host,
                json,
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin")
            ]),
            Ok(())
        );
        assert_eq!(post(&[host]), Err(GuardRefusal::NotJson));
        assert_eq!(
            post(&[host, ("content-type", "text/plain")]),
            Err(GuardRefusal::NotJson)
        );
        assert_eq!(
            post(&[host, json, ("origin", "null")]),
            Err(GuardRefusal::CrossOrigin("null".into()))
        );
        assert_eq!(
            post(&[host, json, ("origin", "http://evil.example")]),
            Err(GuardRefusal::CrossOrigin("http://evil.example".into()))
        );
        assert_eq!(
            post(&[host, json, ("sec-fetch-site", "cross-site")]),
            Err(GuardRefusal::CrossSite("cross-site".into()))
        );
        // Cancels and other writes are guarded the same way.
        let delete = headers(&[host, ("origin", "http://evil.example")]);
        assert!(verdict(&Method::DELETE, &delete, None, &[]).is_err());
    }

    #[test]
    fn reads_need_only_a_served_host() {
        let get = |pairs: &[(&'static str, &'static str)]| {
            verdict(&Method::GET, &headers(pairs), None, &[])
        };
        assert_eq!(
            get(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://evil.example")
            ]),
            Ok(())
        );
        assert_eq!(
            get(&[("host", "attacker.rebind.example:8080")]),
            Err(GuardRefusal::ForeignHost(
                "attacker.rebind.example:8080".into()
            ))
        );
        assert_eq!(get(&[]), Err(GuardRefusal::NoHost));
        // An absolute-form request line names a host of its own.
        let own = headers(&[("host", "127.0.0.1:8080")]);
        assert!(verdict(&Method::GET, &own, Some("evil.example"), &[]).is_err());
        assert_eq!(
            verdict(&Method::GET, &HeaderMap::new(), Some("127.0.0.1:8080"), &[]),
            Ok(())
        );
    }
}
