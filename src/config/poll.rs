//! Checked stage of `transport` and `[poll]`: which transport the worker
//! uses and, for `transport = "http"`, the controller it polls (its URL,
//! timings, auth and TLS files).
//!
//! A `[poll]` table with `transport = "mqtt"` is refused rather than
//! ignored, and so is `[broker] enabled = true` with `transport = "http"`:
//! either would be a setting that silently does nothing. The `[mqtt]` table
//! and the topic keys of `[worker]` are simply unused with `"http"` (the
//! example config sets some of them).
//!
//! It opens no connection; the HTTP client is built from [`PollConfig`] by
//! the transport.

use std::time::Duration;

use url::Url;

use super::check::Checker;
use super::raw::RawPoll;
use super::{BrokerConfig, PollAuth, PollConfig, Secret, Transport};

/// `[poll]` durations (seconds) when the file does not say.
const DEFAULT_INTERVAL: u64 = 5;
const DEFAULT_TIMEOUT: u64 = 30;
const DEFAULT_CONNECT_TIMEOUT: u64 = 10;
/// Upper bound of every `[poll]` duration: one day.
const MAX_SECONDS: u64 = 86_400;

/// `poll.base_url` once checked.
struct BaseUrl {
    /// Normalised by the URL parser, without a trailing `/`.
    text: String,
    https: bool,
}

impl Checker<'_> {
    /// `transport`: `None` (after reporting it) when it names no transport,
    /// or when it was already reported with the wrong type.
    pub(super) fn transport(&mut self, raw: Option<String>) -> Option<Transport> {
        let Some(text) = raw else {
            return (!self.was_dropped("transport")).then_some(Transport::Mqtt);
        };
        match text.to_ascii_lowercase().as_str() {
            "mqtt" => Some(Transport::Mqtt),
            "http" => Some(Transport::Http),
            _ => {
                self.invalid("transport", format!("{text:?} is not one of mqtt, http"));
                None
            }
        }
    }

    /// `[poll]` for `transport`: `Some` exactly with `"http"`. With a
    /// `transport` that names nothing, a `[poll]` table present is still
    /// checked, so its problems are listed too.
    pub(super) fn poll(
        &mut self,
        transport: Option<Transport>,
        raw: Option<RawPoll>,
        broker: &BrokerConfig,
    ) -> Option<PollConfig> {
        match transport {
            Some(Transport::Mqtt) => {
                if raw.is_some() {
                    self.invalid("poll", "used only with transport = \"http\"");
                }
                None
            }
            Some(Transport::Http) => {
                // `broker.enabled` defaults to false, so only an explicit
                // `true` gets here.
                if broker.enabled {
                    self.invalid(
                        "broker.enabled",
                        "the embedded broker serves only transport = \"mqtt\"; \
                         turn it off with transport = \"http\"",
                    );
                }
                Some(self.poll_config(raw.unwrap_or_default()))
            }
            None => {
                if let Some(raw) = raw {
                    self.poll_config(raw);
                }
                None
            }
        }
    }

    fn poll_config(&mut self, raw: RawPoll) -> PollConfig {
        let base_url = self.base_url(raw.base_url);
        let interval = self.poll_seconds("poll.interval", raw.interval, DEFAULT_INTERVAL);
        let timeout = self.poll_seconds("poll.timeout", raw.timeout, DEFAULT_TIMEOUT);
        let connect_timeout = self.poll_seconds(
            "poll.connect_timeout",
            raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        if connect_timeout > timeout {
            let message = format!("must be at most poll.timeout ({})", timeout.as_secs());
            self.invalid("poll.connect_timeout", message);
        }
        let auth = self.poll_auth(raw.bearer_token, raw.username, raw.password);
        // With a bad or missing base_url, whether it is https is unknown:
        // say nothing about the TLS keys' need for it.
        let plain_http = base_url.as_ref().is_some_and(|url| !url.https);
        let tls_files = [
            ("poll.tls_ca_cert", raw.tls_ca_cert),
            ("poll.tls_client_cert", raw.tls_client_cert),
            ("poll.tls_client_key", raw.tls_client_key),
        ];
        let [ca_cert, cert, key] = tls_files.map(|(key, path)| {
            let path = path?;
            if plain_http {
                // Refused rather than ignored, like [mqtt]'s without TLS.
                self.invalid(key, "needs an https:// poll.base_url");
                None
            } else {
                Some(self.existing(key, &path, false))
            }
        });
        let tls_client_auth = self.client_auth("poll", cert, key);
        let tls_insecure = raw.tls_insecure.unwrap_or(false);
        if tls_insecure && plain_http {
            self.invalid("poll.tls_insecure", "needs an https:// poll.base_url");
        } else if tls_insecure && ca_cert.is_some() {
            self.invalid(
                "poll.tls_insecure",
                "accepts any server certificate, so poll.tls_ca_cert would not be used; \
                 set only one of them",
            );
        }
        PollConfig {
            base_url: base_url.map(|url| url.text).unwrap_or_default(),
            interval,
            timeout,
            connect_timeout,
            auth,
            tls_ca_cert: ca_cert,
            tls_client_auth,
            tls_insecure,
        }
    }

    /// `poll.base_url`: required; an absolute http(s) URL with a host and
    /// nothing the worker could not append `/tasks` to. The value is never
    /// shown in an error: it may carry credentials or a token.
    fn base_url(&mut self, raw: Option<String>) -> Option<BaseUrl> {
        const KEY: &str = "poll.base_url";
        let text = self.required(KEY, raw)?;
        // The parser refuses an http(s) URL without a host ("empty host").
        let url = match Url::parse(&text) {
            Ok(url) => url,
            Err(e) => {
                self.invalid(KEY, format!("is not an absolute http(s) URL ({e})"));
                return None;
            }
        };
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => {
                let message = format!("has scheme {other:?}; it must be http:// or https://");
                self.invalid(KEY, message);
                return None;
            }
        };
        let mut ok = true;
        if !url.username().is_empty() || url.password().is_some() {
            self.invalid(
                KEY,
                "must not carry a user name or password; set poll.username and poll.password",
            );
            ok = false;
        }
        if url.query().is_some() {
            self.invalid(KEY, "must not have a query ('?'): /tasks is appended to it");
            ok = false;
        }
        if url.fragment().is_some() {
            self.invalid(KEY, "must not have a fragment ('#')");
            ok = false;
        }
        ok.then(|| BaseUrl {
            text: url.as_str().trim_end_matches('/').to_owned(),
            https,
        })
    }

    /// A `[poll]` duration: 1 s to one day.
    fn poll_seconds(&mut self, key: &str, value: Option<u64>, default: u64) -> Duration {
        let seconds = self.at_least(key, value.unwrap_or(default), 1);
        if seconds > MAX_SECONDS {
            self.invalid(key, format!("must be at most {MAX_SECONDS} (one day)"));
        }
        Duration::from_secs(seconds)
    }

    /// `poll.bearer_token`, or `poll.username` with `poll.password`, or
    /// neither. Each must fit in an HTTP header; no message shows a secret.
    fn poll_auth(
        &mut self,
        bearer_token: Option<String>,
        username: Option<String>,
        password: Option<String>,
    ) -> PollAuth {
        let bearer_token = self.not_empty("poll.bearer_token", bearer_token);
        let username = self.not_empty("poll.username", username);
        let token_chars_ok = bearer_token
            .as_deref()
            .is_none_or(|token| token.chars().all(|c| c.is_ascii_graphic()));
        if !token_chars_ok {
            self.invalid(
                "poll.bearer_token",
                "must be printable ASCII without spaces (the value is not shown)",
            );
        }
        if let Some(name) = &username {
            if name.contains(':') {
                // RFC 7617: the first ':' separates user name and password.
                self.invalid("poll.username", "must not contain ':' (Basic auth)");
            }
            if name.chars().any(char::is_control) {
                self.invalid("poll.username", "must not contain control characters");
            }
        }
        if password
            .as_ref()
            .is_some_and(|p| p.chars().any(char::is_control))
        {
            self.invalid(
                "poll.password",
                "must not contain control characters (the value is not shown)",
            );
        }
        match (bearer_token, username, password) {
            (None, None, None) => PollAuth::None,
            (Some(token), None, None) => PollAuth::Bearer(Secret(token)),
            (None, Some(username), Some(password)) => PollAuth::Basic {
                username,
                password: Secret(password),
            },
            (Some(_), _, _) => {
                self.invalid(
                    "poll.bearer_token",
                    "cannot be combined with poll.username and poll.password: \
                     choose one kind of auth",
                );
                PollAuth::None
            }
            (None, Some(_), None) => {
                self.invalid("poll.password", "is required with poll.username");
                PollAuth::None
            }
            (None, None, Some(_)) => {
                self.invalid("poll.username", "is required with poll.password");
                PollAuth::None
            }
        }
    }
}
