//! `transport` and `[poll]`: defaults, each rule with its key, the conflict
//! with the embedded broker, and secrets kept out of `Debug` and errors.

use super::*;

/// MINIMAL with `transport = "http"` and `poll`, the lines of `[poll]`.
fn http(poll: &str) -> String {
    format!("transport = \"http\"\n{MINIMAL}[poll]\n{poll}")
}

/// The only problem of `text`, which must have exactly one.
#[track_caller]
fn only_problem(text: &str, dir: &Path) -> String {
    let errors = messages(load(text, dir));
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.into_iter().next().unwrap()
}

#[test]
fn transport_defaults_to_mqtt_without_poll() {
    let dir = base();
    let config = load(MINIMAL, dir.path()).unwrap();
    assert_eq!(config.transport, Transport::Mqtt);
    assert!(config.poll.is_none());
    let config = load(&format!("transport = \"mqtt\"\n{MINIMAL}"), dir.path()).unwrap();
    assert_eq!(config.transport, Transport::Mqtt);
}

#[test]
fn http_transport_applies_the_poll_defaults_and_trims_the_url() {
    let dir = base();
    let config = load(
        &http("base_url = \"https://Ctl.Example/api/\"\n"),
        dir.path(),
    )
    .unwrap();
    assert_eq!(config.transport, Transport::Http);
    let poll = config.poll.unwrap();
    assert_eq!(poll.base_url, "https://ctl.example/api");
    assert_eq!(poll.interval, Duration::from_secs(5));
    assert_eq!(poll.timeout, Duration::from_secs(30));
    assert_eq!(poll.connect_timeout, Duration::from_secs(10));
    assert!(matches!(poll.auth, PollAuth::None));
    assert!(poll.tls_ca_cert.is_none() && poll.tls_client_auth.is_none());
    assert!(!poll.tls_insecure);
    // Like log_level, the value is not case sensitive.
    let text =
        format!("transport = \"HTTP\"\n{MINIMAL}[poll]\nbase_url = \"http://10.0.0.1:8000\"\n");
    let poll = load(&text, dir.path()).unwrap().poll.unwrap();
    assert_eq!(poll.base_url, "http://10.0.0.1:8000");
    let text =
        http("base_url = \"http://h/\"\ninterval = 1\ntimeout = 86400\nconnect_timeout = 2\n");
    let poll = load(&text, dir.path()).unwrap().poll.unwrap();
    assert_eq!(poll.base_url, "http://h");
    assert_eq!(
        (poll.interval, poll.timeout, poll.connect_timeout),
        (
            Duration::from_secs(1),
            Duration::from_secs(86400),
            Duration::from_secs(2)
        )
    );
}

#[test]
fn transport_must_name_mqtt_or_http() {
    let dir = base();
    let text = format!("transport = \"amqp\"\n{MINIMAL}");
    assert_eq!(
        only_problem(&text, dir.path()),
        "transport: \"amqp\" is not one of mqtt, http"
    );
    // A [poll] table is still checked then, so its problems are listed too.
    let text = format!("transport = \"htp\"\n{MINIMAL}[poll]\nbase_url = \"x\"\ninterval = 0\n");
    assert_eq!(
        messages(load(&text, dir.path())),
        [
            "transport: \"htp\" is not one of mqtt, http",
            "poll.base_url: is not an absolute http(s) URL (relative URL without a base)",
            "poll.interval: must be at least 1",
        ]
    );
    // So with a transport of the wrong type, which says nothing of [poll]
    // being allowed.
    let text = format!("transport = 1\n{MINIMAL}[poll]\nbase_url = \"http://h\"\ninterval = 0\n");
    assert_eq!(
        messages(load(&text, dir.path())),
        [
            "transport: invalid type: integer `1`, expected a string",
            "poll.interval: must be at least 1",
        ]
    );
}

#[test]
fn a_poll_table_with_mqtt_is_refused() {
    let dir = base();
    let expected = "poll: used only with transport = \"http\"";
    let text = format!("{MINIMAL}[poll]\nbase_url = \"http://h\"\n");
    assert_eq!(only_problem(&text, dir.path()), expected);
    let text = format!("transport = \"mqtt\"\n{MINIMAL}[poll]\n");
    assert_eq!(only_problem(&text, dir.path()), expected);
}

#[test]
fn http_needs_a_base_url() {
    let dir = base();
    let text = format!("transport = \"http\"\n{MINIMAL}");
    assert_eq!(
        only_problem(&text, dir.path()),
        "poll.base_url: is required"
    );
    assert_eq!(
        only_problem(&http(""), dir.path()),
        "poll.base_url: is required"
    );
}

#[test]
fn base_url_must_be_a_plain_absolute_http_url() {
    let dir = base();
    let cases = [
        (
            "ftp://h/x",
            "has scheme \"ftp\"; it must be http:// or https://",
        ),
        (
            "/tasks",
            "is not an absolute http(s) URL (relative URL without a base)",
        ),
        ("http://", "is not an absolute http(s) URL (empty host)"),
        (
            "http://h:99999",
            "is not an absolute http(s) URL (invalid port number)",
        ),
        (
            "https://ops:pw-in-url@h/api",
            "must not carry a user name or password; set poll.username and poll.password",
        ),
        (
            "http://h/api?token=abc",
            "must not have a query ('?'): /tasks is appended to it",
        ),
        ("http://h/api#top", "must not have a fragment ('#')"),
    ];
    for (url, message) in cases {
        let problem = only_problem(&http(&format!("base_url = \"{url}\"\n")), dir.path());
        assert_eq!(problem, format!("poll.base_url: {message}"), "{url}");
    }
}

#[test]
fn poll_durations_are_bounded_and_connect_fits_in_the_timeout() {
    let dir = base();
    let text =
        http("base_url = \"http://h\"\ninterval = 0\ntimeout = 86401\nconnect_timeout = 0\n");
    assert_eq!(
        messages(load(&text, dir.path())),
        [
            "poll.interval: must be at least 1",
            "poll.timeout: must be at most 86400 (one day)",
            "poll.connect_timeout: must be at least 1",
        ]
    );
    let text = http("base_url = \"http://h\"\ntimeout = 5\n");
    assert_eq!(
        only_problem(&text, dir.path()),
        "poll.connect_timeout: must be at most poll.timeout (5)"
    );
    // A timeout of the wrong type is reported once, not again through the default.
    let text = http("base_url = \"http://h\"\ntimeout = \"5\"\nconnect_timeout = 40\n");
    assert_eq!(
        only_problem(&text, dir.path()),
        "poll.timeout: invalid type: string \"5\", expected u64"
    );
}

#[test]
fn bearer_token_or_basic_auth() {
    let dir = base();
    let url = "base_url = \"https://h\"\n";
    let text = http(&format!("{url}bearer_token = \"t0k3n\"\n"));
    match load(&text, dir.path()).unwrap().poll.unwrap().auth {
        PollAuth::Bearer(token) => assert_eq!(token.expose(), "t0k3n"),
        other => panic!("{other:?}"),
    }
    let text = http(&format!("{url}username = \"ops\"\npassword = \"pw\"\n"));
    match load(&text, dir.path()).unwrap().poll.unwrap().auth {
        PollAuth::Basic { username, password } => {
            assert_eq!((username.as_str(), password.expose()), ("ops", "pw"));
        }
        other => panic!("{other:?}"),
    }
    let cases = [
        (
            "bearer_token = \"t\"\nusername = \"ops\"\npassword = \"pw\"\n",
            "poll.bearer_token: cannot be combined with poll.username and poll.password: \
             choose one kind of auth",
        ),
        (
            "username = \"ops\"\n",
            "poll.password: is required with poll.username",
        ),
        (
            "password = \"pw\"\n",
            "poll.username: is required with poll.password",
        ),
        (
            "bearer_token = \"\"\n",
            "poll.bearer_token: must not be empty (leave the key out instead)",
        ),
        (
            "username = \"a:b\"\npassword = \"pw\"\n",
            "poll.username: must not contain ':' (Basic auth)",
        ),
        (
            "bearer_token = \"two words\"\n",
            "poll.bearer_token: must be printable ASCII without spaces (the value is not shown)",
        ),
        (
            "username = \"ops\"\npassword = \"p\\nw\"\n",
            "poll.password: must not contain control characters (the value is not shown)",
        ),
    ];
    for (lines, expected) in cases {
        let text = http(&format!("{url}{lines}"));
        assert_eq!(only_problem(&text, dir.path()), expected, "{lines}");
    }
}

#[test]
fn poll_tls_files_are_resolved_and_checked() {
    let dir = base();
    for file in ["ca.pem", "c.pem", "c.key"] {
        fs::write(dir.path().join(file), "x").unwrap();
    }
    let files =
        "tls_ca_cert = \"ca.pem\"\ntls_client_cert = \"c.pem\"\ntls_client_key = \"c.key\"\n";
    let text = http(&format!("base_url = \"https://h\"\n{files}"));
    let poll = load(&text, dir.path()).unwrap().poll.unwrap();
    let root = dir.path();
    assert_eq!(poll.tls_ca_cert, Some(root.join("ca.pem")));
    assert_eq!(
        poll.tls_client_auth,
        Some((root.join("c.pem"), root.join("c.key")))
    );
    let text = http("base_url = \"https://h\"\ntls_insecure = true\n");
    assert!(load(&text, dir.path()).unwrap().poll.unwrap().tls_insecure);

    let text =
        http("base_url = \"https://h\"\ntls_ca_cert = \"nope.pem\"\ntls_client_cert = \"c.pem\"\n");
    assert_eq!(
        messages(load(&text, dir.path())),
        [
            format!(
                "poll.tls_ca_cert: {} does not exist",
                root.join("nope.pem").display()
            ),
            "poll.tls_client_key: is required with poll.tls_client_cert".to_owned(),
        ]
    );
    // Only https uses them; plain http refuses rather than ignores them.
    let text = http(&format!(
        "base_url = \"http://h\"\n{files}tls_insecure = true\n"
    ));
    assert_eq!(
        messages(load(&text, dir.path())),
        [
            "poll.tls_ca_cert: needs an https:// poll.base_url",
            "poll.tls_client_cert: needs an https:// poll.base_url",
            "poll.tls_client_key: needs an https:// poll.base_url",
            "poll.tls_insecure: needs an https:// poll.base_url",
        ]
    );
    let text = http("base_url = \"https://h\"\ntls_ca_cert = \"ca.pem\"\ntls_insecure = true\n");
    assert_eq!(
        only_problem(&text, dir.path()),
        "poll.tls_insecure: accepts any server certificate, so poll.tls_ca_cert would not \
         be used; set only one of them"
    );
}

#[test]
fn the_embedded_broker_is_refused_with_http() {
    let dir = base();
    let text = http("base_url = \"http://h\"\n") + "[broker]\nenabled = true\n";
    assert_eq!(
        only_problem(&text, dir.path()),
        "broker.enabled: the embedded broker serves only transport = \"mqtt\"; \
         turn it off with transport = \"http\""
    );
    // Absent (the default) or false, it stays off.
    for broker in [
        "",
        "[broker]\nlisten = \"127.0.0.1:1999\"\n",
        "[broker]\nenabled = false\n",
    ] {
        let text = http("base_url = \"http://h\"\n") + broker;
        let config = load(&text, dir.path()).unwrap();
        assert!(!config.broker.enabled, "{broker}");
    }
}

#[test]
fn every_poll_problem_is_listed_at_once() {
    let dir = base();
    let text = http(
        "base_url = \"https://u:p@h?x\"\ninterval = 0\nconnect_timeout = 60\n\
         bearer_token = \"t\"\nusername = \"ops\"\ntls_client_key = \"k.pem\"\n",
    ) + "[broker]\nenabled = true\n";
    let keys: Vec<String> = load(&text, dir.path())
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.key().to_owned())
        .collect();
    assert_eq!(
        keys,
        [
            "broker.enabled",
            "poll.base_url",
            "poll.base_url",
            "poll.interval",
            "poll.connect_timeout",
            "poll.bearer_token",
            "poll.tls_client_key",
            "poll.tls_client_cert",
        ]
    );
}

#[test]
fn poll_secrets_stay_out_of_debug_and_errors() {
    let dir = base();
    let text = http("base_url = \"https://h\"\nbearer_token = \"hunter2\"\n");
    let config = load(&text, dir.path()).unwrap();
    assert!(!format!("{config:?}").contains("hunter2"));
    let text = http("base_url = \"https://h\"\nusername = \"ops\"\npassword = \"hunter3\"\n");
    let config = load(&text, dir.path()).unwrap();
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("hunter3") && shown.contains("ops"),
        "{shown}"
    );
    // Neither in the error about a URL that carries one.
    let text = http("base_url = \"https://ops:hunter4@h\"\nbearer_token = \"bad token5\"\n");
    let errors = messages(load(&text, dir.path())).join("\n");
    assert!(
        !errors.contains("hunter4") && !errors.contains("token5"),
        "{errors}"
    );
    // Nor in a wrong-type error: serde would quote the value.
    let text = http("base_url = \"https://h\"\npassword = 918273\nbearer_token = 6457.5\n")
        + "[broker.users]\nalice = 314159\n";
    let errors = messages(load(&text, dir.path()));
    assert_eq!(
        errors,
        [
            "broker.users.alice: invalid type: integer, expected a string",
            "poll.bearer_token: invalid type: floating point, expected a string",
            "poll.password: invalid type: integer, expected a string",
        ]
    );
}

#[test]
fn the_example_documents_every_poll_key() {
    // serde lists the keys [poll] knows when it meets one it does not.
    let unknown = toml::from_str::<raw::RawPoll>("no_such_key = 1")
        .err()
        .unwrap();
    let message = unknown.message().to_owned();
    let keys: Vec<&str> = message.split('`').skip(3).step_by(2).collect();
    assert!(
        keys.contains(&"base_url") && keys.contains(&"tls_insecure"),
        "{message}"
    );
    let section = EXAMPLE_CONFIG
        .split("\n# [poll]\n")
        .nth(1)
        .expect("config.example.toml has a commented [poll] section");
    let section = section.split("\n[").next().unwrap();
    for key in keys {
        assert!(
            section.contains(&format!("\n# {key} = ")),
            "[poll] {key} is not documented in config.example.toml"
        );
    }
    assert!(EXAMPLE_CONFIG.contains("\ntransport = \"mqtt\"\n"));
}
