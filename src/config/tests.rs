//! Unit tests of the config stages: defaults, `${VAR}` expansion, error
//! messages naming their keys, path resolution and the embedded example.

use super::*;
use std::collections::HashMap;

/// A temp dir with a `playbooks/` directory, the minimum a config needs.
fn base() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("playbooks")).unwrap();
    dir
}

const MINIMAL: &str =
    "[worker]\ngroup_name = \"g\"\nworker_id = \"w\"\nplaybook_directory = \"playbooks\"\n";

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str, dir: &Path) -> Result<Config, ConfigErrors> {
    Config::from_toml(text, dir, &no_env)
}

fn messages(result: Result<Config, ConfigErrors>) -> Vec<String> {
    let errors = result.expect_err("config should be refused");
    errors.0.iter().map(ToString::to_string).collect()
}

#[test]
fn defaults_are_applied_when_keys_are_absent() {
    let dir = base();
    let config = load(MINIMAL, dir.path()).unwrap();
    let w = &config.worker;
    assert_eq!(config.log_level, "info");
    assert_eq!(w.topic_prefix, "ansible");
    assert!(w.shared_subscription && !w.suffix_status_with_worker_id);
    assert_eq!(
        (w.concurrency, w.max_queue_size, w.history_limit),
        (2, 100, 1000)
    );
    assert_eq!(w.task_timeout, Duration::from_secs(3600));
    assert_eq!(w.kill_grace, Duration::from_secs(10));
    assert_eq!(w.ansible_playbook_path, Path::new("ansible-playbook"));
    assert_eq!(w.git_path, Path::new("git"));
    assert!(!w.allow_ansible_vars);
    assert_eq!(w.max_request_size, 1_048_576);
    assert_eq!(w.inventory_plugins, ["host_list", "ini", "yaml", "toml"]);
    assert_eq!(w.state_dir, dir.path().join("var"));
    let m = &config.mqtt;
    assert_eq!((m.host.as_deref(), m.port), (None, 1883));
    assert!(m.username.is_none() && m.password.is_none() && m.tls.is_none());
    assert_eq!(m.keepalive, Duration::from_secs(60));
    assert!(!config.broker.enabled && config.broker.users.is_empty());
    assert_eq!(config.broker.listen, "127.0.0.1:1883".parse().unwrap());
    assert_eq!(config.broker.listen_v4, None);
    assert_eq!(config.broker.max_payload_size, 1_048_576);
    assert!(!config.http.enabled && config.http.token.is_none());
    assert_eq!(config.http.listen, "127.0.0.1:8080".parse().unwrap());
    assert!(config.http.allowed_hosts.is_empty());
}

#[test]
fn request_size_plugins_and_hosts_are_checked() {
    let dir = base();
    let text = format!(
        "{MINIMAL}max_request_size = 10\ninventory_plugins = [\"ini\", \"a,b\"]\n\
         [http]\nallowed_hosts = [\"Lab.Example\", \"evil/x\"]\n"
    );
    let errors = messages(load(&text, dir.path()));
    assert!(
        errors.iter().any(|e| e.contains("worker.max_request_size")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("\"a,b\"")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("\"evil/x\"")),
        "{errors:?}"
    );
    let text = format!("{MINIMAL}\n[http]\nallowed_hosts = [\"Lab.Example\"]\n");
    let config = load(&text, dir.path()).unwrap();
    assert_eq!(config.http.allowed_hosts, ["lab.example"]);
}

#[test]
fn worker_id_defaults_to_the_hostname() {
    let dir = base();
    let text = "[worker]\ngroup_name = \"g\"\nplaybook_directory = \"playbooks\"\n";
    let config = load(text, dir.path()).unwrap();
    let hostname = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(config.worker.worker_id, hostname);
}

#[test]
fn env_vars_are_expanded_in_every_string() {
    let dir = base();
    let vars = HashMap::from([("PW", "s3cret"), ("GROUP", "lab"), ("USER", "worker")]);
    let env = |name: &str| vars.get(name).map(|v| v.to_string());
    let text = format!(
        "{}[mqtt]\nusername = \"${{USER}}\"\npassword = \"${{PW}}\"\n\
         [broker]\nenabled = true\n[broker.users]\nworker = \"${{PW}}\"\n",
        MINIMAL.replace("\"g\"", "\"${GROUP}-x\"")
    );
    let config = Config::from_toml(&text, dir.path(), &env).unwrap();
    assert_eq!(config.worker.group_name, "lab-x");
    assert_eq!(config.mqtt.username.as_deref(), Some("worker"));
    assert_eq!(config.mqtt.password.unwrap().expose(), "s3cret");
    assert_eq!(config.broker.users["worker"].expose(), "s3cret");
}

#[test]
fn missing_env_var_error_names_variable_and_key() {
    let dir = base();
    let text = format!("{MINIMAL}[mqtt]\nusername = \"u\"\npassword = \"${{MQTT_PASSWORD}}\"\n");
    assert_eq!(
        messages(load(&text, dir.path())),
        ["mqtt.password: environment variable MQTT_PASSWORD is not set"]
    );
}

#[test]
fn escaped_dollar_brace_stays_literal() {
    let dir = base();
    let text = format!("{MINIMAL}[http]\ntoken = \"a$${{B}}$c\"\n");
    let config = load(&text, dir.path()).unwrap();
    assert_eq!(config.http.token.unwrap().expose(), "a${B}$c");
}

#[test]
fn unknown_key_error_names_it() {
    let dir = base();
    let text = format!("{MINIMAL}concurency = 3\n");
    let errors = messages(load(&text, dir.path()));
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0],
        "worker.concurency: unknown key (did you mean `concurrency`?)"
    );
    // Nothing close: the known keys are listed.
    let errors = messages(load(
        "[http]
colour = 1
",
        dir.path(),
    ));
    assert!(
        errors[0].starts_with("http.colour: unknown key, expected one of enabled, listen,"),
        "{errors:?}"
    );
}

#[test]
fn wrong_types_unknown_keys_and_broken_rules_are_listed_together() {
    // The example of the issue: one wrong type used to hide the rest.
    let dir = base();
    let text = "[worker]
group_name = \"g\"\nworker_id = \"w\"\nconcurrency = \"two\"\n\
                max_queue_sise = 5\nplaybook_directory = \"missing\"\n";
    let missing = dir.path().join("missing");
    assert_eq!(
        messages(load(text, dir.path())),
        [
            "worker.concurrency: invalid type: string \"two\", expected usize".to_owned(),
            "worker.max_queue_sise: unknown key (did you mean `max_queue_size`?)".to_owned(),
            format!(
                "worker.playbook_directory: {} does not exist",
                missing.display()
            ),
        ]
    );
}

#[test]
fn every_wrong_type_and_unknown_key_is_listed_across_sections() {
    let dir = base();
    let text = format!(
        "{MINIMAL}history_limit = -1\ninventory_plugins = [\"ini\", 3]\n\
         [mqtt]\nport = \"x\"\nusername = \"${{NO_USER}}\"\n[broker]\nlisen = \"x\"\n\
         [broker.users]\nalice = 7\n[htp]\nenabled = true\n"
    );
    assert_eq!(
        messages(load(&text, dir.path())),
        [
            "mqtt.username: environment variable NO_USER is not set",
            "broker.lisen: unknown key (did you mean `listen`?)",
            "broker.users.alice: invalid type: integer, expected a string",
            "htp: unknown key (did you mean `http`?)",
            "mqtt.port: invalid type: string \"x\", expected u16",
            "worker.history_limit: invalid value: integer `-1`, expected usize",
            "worker.inventory_plugins[1]: invalid type: integer `3`, expected a string",
        ]
    );
}

#[test]
fn a_rule_broken_only_by_a_dropped_key_is_not_reported_again() {
    let dir = base();
    // Dropped, `tls_enabled` would read as false and refuse the CA file;
    // a dropped `[worker]` would make both its required keys missing.
    let text = "[worker]\ngroup_name = 5\nplaybook_directory = \"playbooks\"\nworker_id = \"w\"\n\
                [mqtt]\ntls_enabled = \"yes\"\ntls_ca_cert = \"ca.pem\"\n";
    assert_eq!(
        messages(load(text, dir.path())),
        [
            "mqtt.tls_enabled: invalid type: string \"yes\", expected a boolean",
            "worker.group_name: invalid type: integer `5`, expected a string",
        ]
    );
    assert_eq!(
        messages(load("worker = 3\n", dir.path())),
        ["worker: invalid type: integer `3`, expected a table"]
    );
}

#[test]
fn wrong_type_error_names_key_path() {
    let dir = base();
    let text = format!("{MINIMAL}concurrency = \"2\"\n");
    assert_eq!(
        messages(load(&text, dir.path())),
        ["worker.concurrency: invalid type: string \"2\", expected usize"]
    );
}

#[test]
fn syntax_error_gives_line_and_column() {
    let errors = messages(load("log_level = \"info\"\n[worker\n", Path::new("/")));
    assert_eq!(
        errors,
        ["TOML syntax error at line 2, column 8: invalid table header; expected `.`, `]`"]
    );
}

#[test]
fn all_semantic_errors_are_listed_together() {
    let dir = base();
    let text = "log_level = \"loud\"\n[worker]\ngroup_name = \"a/b\"\nworker_id = \"w#1\"\n\
                playbook_directory = \"missing\"\nconcurrency = 0\ntask_timeout = 0\n\
                topic_prefix = \"x+\"\n[mqtt]\nkeepalive = 1\n[broker]\nmax_payload_size = 10\n\
                listen = \"nowhere\"\n";
    let errors = load(text, dir.path()).unwrap_err();
    let missing = dir.path().join("missing");
    let expected = [
        "log_level: \"loud\" is not one of trace, debug, info, warn, error".to_owned(),
        "worker.group_name: \"a/b\" must not contain '/' (it is one MQTT topic level)".to_owned(),
        "worker.worker_id: \"w#1\" must not contain '#' (it is one MQTT topic level)".to_owned(),
        format!(
            "worker.playbook_directory: {} does not exist",
            missing.display()
        ),
        "worker.topic_prefix: \"x+\" must not contain '+'".to_owned(),
        "worker.concurrency: must be at least 1".to_owned(),
        "worker.task_timeout: must be at least 1".to_owned(),
        "broker.listen: \"nowhere\" is not an IP:PORT socket address".to_owned(),
        "broker.max_payload_size: must be at least 1024".to_owned(),
        "mqtt.keepalive: must be at least 5".to_owned(),
    ];
    assert_eq!(errors.to_string(), expected.join("\n"));
}

#[test]
fn missing_required_keys_are_named() {
    let errors = messages(load("", Path::new("/")));
    assert_eq!(
        errors,
        [
            "worker.group_name: is required",
            "worker.playbook_directory: is required"
        ]
    );
}

#[test]
fn tls_client_cert_without_key_is_refused() {
    let dir = base();
    fs::write(dir.path().join("worker.pem"), "x").unwrap();
    let text = format!(
        "{MINIMAL}[mqtt]\nhost = \"b\"\ntls_enabled = true\ntls_client_cert = \"worker.pem\"\n"
    );
    assert_eq!(
        messages(load(&text, dir.path())),
        ["mqtt.tls_client_key: is required with mqtt.tls_client_cert"]
    );
}

#[test]
fn tls_files_without_tls_enabled_are_refused() {
    let dir = base();
    let text = format!("{MINIMAL}[mqtt]\ntls_ca_cert = \"ca.pem\"\n");
    assert_eq!(
        messages(load(&text, dir.path())),
        ["mqtt.tls_ca_cert: is set but mqtt.tls_enabled is false"]
    );
}

#[test]
fn relative_paths_resolve_against_base_dir() {
    let dir = base();
    for file in ["ca.pem", "c.pem", "c.key"] {
        fs::write(dir.path().join(file), "x").unwrap();
    }
    let text = format!(
        "{MINIMAL}state_dir = \"state\"\nansible_playbook_path = \".venv/bin/ansible-playbook\"\n\
         [mqtt]\nhost = \"b\"\ntls_enabled = true\ntls_ca_cert = \"ca.pem\"\n\
         tls_client_cert = \"c.pem\"\ntls_client_key = \"c.key\"\n"
    );
    let config = load(&text, dir.path()).unwrap();
    let root = dir.path();
    let w = &config.worker;
    assert_eq!(
        w.playbook_directory,
        fs::canonicalize(root.join("playbooks")).unwrap()
    );
    assert_eq!(w.state_dir, root.join("state"));
    assert_eq!(
        w.ansible_playbook_path,
        root.join(".venv/bin/ansible-playbook")
    );
    assert_eq!(
        w.git_path,
        Path::new("git"),
        "bare names stay for PATH lookup"
    );
    let tls = config.mqtt.tls.unwrap();
    assert_eq!(tls.ca_cert, Some(root.join("ca.pem")));
    assert_eq!(
        tls.client_auth,
        Some((root.join("c.pem"), root.join("c.key")))
    );
}

#[test]
fn load_resolves_against_the_config_files_directory() {
    let dir = base();
    let path = dir.path().join("worker.toml");
    fs::write(&path, MINIMAL).unwrap();
    let config = Config::load(&path).unwrap();
    let expected = fs::canonicalize(dir.path()).unwrap().join("playbooks");
    assert_eq!(config.worker.playbook_directory, expected);
    let missing = messages(Config::load(&dir.path().join("nope.toml")));
    assert!(
        missing[0].contains("nope.toml: cannot read config file"),
        "{missing:?}"
    );
}

#[test]
fn embedded_broker_with_users_needs_a_matching_login() {
    let dir = base();
    let text = format!(
        "{MINIMAL}[mqtt]\nusername = \"worker\"\npassword = \"wrong\"\n\
         [broker]\nenabled = true\n[broker.users]\nworker = \"right\"\n"
    );
    assert_eq!(
        messages(load(&text, dir.path())),
        ["mqtt.password: does not match broker.users.worker"]
    );
}

#[test]
fn broker_roles_name_known_users_and_known_roles() {
    let dir = base();
    let users = "[broker.users]\nops = \"a\"\nwatch = \"b\"\n";
    let text = format!("{MINIMAL}{users}[broker.roles]\nwatch = \"observer\"\n");
    let config = load(&text, dir.path()).unwrap();
    assert_eq!(config.broker.roles["watch"], BrokerRole::Observer);
    assert!(!config.broker.roles.contains_key("ops"));
    let text =
        format!("{MINIMAL}{users}[broker.roles]\nwatch = \"admin\"\nnobody = \"observer\"\n");
    assert_eq!(
        messages(load(&text, dir.path())),
        [
            "broker.roles.nobody: \"nobody\" is not in [broker.users]",
            "broker.roles.watch: \"admin\" is not a role (controller, observer)",
        ]
    );
}

#[test]
fn secret_never_shows_in_debug_or_display() {
    let dir = base();
    let text = format!("{MINIMAL}[http]\ntoken = \"hunter2\"\n");
    let config = load(&text, dir.path()).unwrap();
    assert!(!format!("{config:?}").contains("hunter2"));
    let token = config.http.token.unwrap();
    assert_eq!(
        (format!("{token}"), format!("{token:?}")),
        ("***".into(), "***".into())
    );
    assert_eq!(token.expose(), "hunter2");
}

#[test]
fn effective_host_prefers_explicit_then_embedded_then_loopback() {
    let dir = base();
    let config = load(MINIMAL, dir.path()).unwrap();
    let (mut mqtt, mut broker) = (config.mqtt, config.broker);
    assert_eq!(mqtt.effective_host(&broker), ("127.0.0.1".into(), 1883));
    broker.enabled = true;
    broker.listen = "0.0.0.0:1999".parse().unwrap();
    assert_eq!(mqtt.effective_host(&broker), ("127.0.0.1".into(), 1999));
    mqtt.host = Some("broker.example.com".into());
    assert_eq!(
        mqtt.effective_host(&broker),
        ("broker.example.com".into(), 1883)
    );
}

#[test]
fn example_config_loads_with_an_empty_environment() {
    let config = load(EXAMPLE_CONFIG, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert_eq!(config.worker.group_name, "lab");
    assert_eq!(config.worker.worker_id, "lab-1");
    assert!(config.broker.enabled && config.http.enabled);
    assert_eq!(
        config.mqtt.effective_host(&config.broker),
        ("127.0.0.1".into(), 1883)
    );
}

mod poll;
