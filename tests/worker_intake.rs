//! What a requester cannot make the worker do, against a real Mosquitto and
//! a real ansible-playbook: run an inventory script, read a hidden file back,
//! redirect a connection through a reserved variable, or find any of these
//! offered by `/api/playbooks`. Each refusal is one `failed` status naming
//! the rule; what the config widens on purpose works.

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::*;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A line of the vault password file that must never leave the worker.
const SECRET: &str = "vault-line-7f3a9c";

/// A playbook directory with a vault password file, symlinks to it and out
/// of the directory, an inventory script that leaves a marker when run, and
/// a playbook reporting which host it ran as.
struct PlaybookDir {
    dir: TempDir,
    outside: TempDir,
}

impl PlaybookDir {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let outside = TempDir::new().unwrap();
        let pb = dir.path();
        std::fs::copy(
            playbooks_dir().join("localhost.yml"),
            pb.join("localhost.yml"),
        )
        .unwrap();
        std::fs::write(
            pb.join("whoami.yml"),
            "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.set_stats:\n        \
             data: {host: \"{{ inventory_hostname }}\"}\n        aggregate: false\n",
        )
        .unwrap();
        std::fs::write(pb.join(".vault_pass"), format!("{SECRET}\nsecond-line\n")).unwrap();
        symlink(pb.join(".vault_pass"), pb.join("vault.yml")).unwrap();
        std::fs::write(outside.path().join("out.yml"), "- hosts: all\n").unwrap();
        symlink(outside.path().join("out.yml"), pb.join("escape.yml")).unwrap();
        std::fs::create_dir(pb.join("files")).unwrap();
        let script = pb.join("files/deploy.sh");
        let inventory = json!({
            "all": {"hosts": ["localhost"], "vars": {"ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}"}},
            "_meta": {"hostvars": {}}
        });
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ntouch '{}'\necho '{inventory}'\n",
                outside.path().join("marker").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        PlaybookDir { dir, outside }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The file the inventory script touches when it runs.
    fn marker(&self) -> PathBuf {
        self.outside.path().join("marker")
    }
}

/// A worker of `group` on `broker` for `playbooks`, with `worker_lines` added
/// to `[worker]` and, when `http` is given, its HTTP server on that port.
fn worker(
    group: &str,
    broker: &Mosquitto,
    playbooks: &PlaybookDir,
    worker_lines: &str,
    http: Option<u16>,
) -> Worker {
    let http_section = http
        .map(|port| format!("[http]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"))
        .unwrap_or_default();
    let worker = Worker::with_config(|dir| {
        format!(
            "log_level = \"debug\"\n[worker]\ngroup_name = \"{group}\"\nworker_id = \"{group}-w1\"\n\
             playbook_directory = {playbooks:?}\nansible_playbook_path = {ansible:?}\n\
             state_dir = {state:?}\n{worker_lines}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
             {http_section}",
            playbooks = playbooks.path().display().to_string(),
            ansible = ansible_playbook().display().to_string(),
            state = dir.join("state").display().to_string(),
            port = broker.port,
        )
    });
    worker.wait_log("subscribed", DEADLINE);
    worker
}

/// An observer that also records every other message of the group (the
/// events topics included).
async fn observe_everything(broker: &Mosquitto, group: &str) -> Observer {
    let observer = Observer::start(broker.port, group).await;
    observer
        .client
        .subscribe(format!("ansible/{group}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    // A status of a request sent before the subscription was granted could
    // be missed: one round trip through the worker proves it is in place.
    observer
        .submit(json!({"task_id": "probe", "playbook": "nope.yml", "inventory": "x,"}))
        .await;
    observer.wait_final("probe", DEADLINE).await;
    observer
}

fn error_message(doc: &Value) -> &str {
    doc["error_message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executable_inventory_is_refused_and_never_runs() {
    let broker = Mosquitto::start();
    let playbooks = PlaybookDir::new();
    let w = worker("inv-script", &broker, &playbooks, "", None);
    let observer = Observer::start(broker.port, "inv-script").await;
    let request = json!({"task_id": "script-1", "playbook": "whoami.yml",
        "inventory": "files/deploy.sh"});
    observer.submit(request).await;
    let done = observer.wait_final("script-1", DEADLINE).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(done["started_at"].is_null(), "{done}");
    assert!(
        error_message(&done).starts_with("Inventory is an executable file: files/deploy.sh;"),
        "{done}"
    );
    assert!(
        error_message(&done).contains("worker.inventory_plugins"),
        "{done}"
    );
    assert!(!playbooks.marker().exists(), "the inventory script ran");
    drop(w);

    // Widened on purpose: the script plugin runs it.
    let plugins = r#"inventory_plugins = ["host_list", "ini", "yaml", "toml", "script"]"#;
    let _w = worker("inv-script", &broker, &playbooks, plugins, None);
    let request = json!({"task_id": "script-2", "playbook": "whoami.yml",
        "inventory": "files/deploy.sh"});
    observer.submit(request).await;
    let done = observer.wait_final("script-2", DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(done["output"], json!({"host": "localhost"}), "{done}");
    assert!(
        playbooks.marker().exists(),
        "the inventory script did not run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_files_are_refused_and_never_quoted() {
    let broker = Mosquitto::start();
    let playbooks = PlaybookDir::new();
    let w = worker("hidden", &broker, &playbooks, "", None);
    let observer = observe_everything(&broker, "hidden").await;
    let cases = [
        (
            json!({"task_id": "h-pb", "playbook": ".vault_pass", "inventory": "localhost.yml"}),
            "Playbook is a hidden file (a path component starts with '.'): .vault_pass",
        ),
        (
            json!({"task_id": "h-inv", "playbook": "whoami.yml", "inventory": ".vault_pass"}),
            "Inventory is a hidden file (a path component starts with '.'): .vault_pass",
        ),
        (
            json!({"task_id": "h-link", "playbook": "vault.yml", "inventory": "localhost.yml"}),
            "Playbook resolves to a hidden file (a path component starts with '.'): vault.yml",
        ),
    ];
    for (request, reason) in cases {
        let id = request["task_id"].as_str().unwrap().to_owned();
        observer.submit(request).await;
        let done = observer.wait_final(&id, DEADLINE).await;
        assert_eq!(done["state"], "failed", "{done}");
        assert_eq!(error_message(&done), reason, "{done}");
        assert_eq!(done["output"], json!({}), "{done}");
    }
    for seen in observer.all() {
        assert!(
            !seen.doc.to_string().contains(SECRET),
            "{}: {}",
            seen.topic,
            seen.doc
        );
    }
    assert!(!w.log().contains(SECRET), "the log quotes the vault file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_extra_vars_are_refused_unless_allowed() {
    let broker = Mosquitto::start();
    let playbooks = PlaybookDir::new();
    let w = worker("reserved", &broker, &playbooks, "", None);
    let observer = Observer::start(broker.port, "reserved").await;
    let request = |id: &str| {
        json!({"task_id": id, "playbook": "whoami.yml", "inventory": "localhost.yml",
            "extra_vars": {"inventory_hostname": "127.0.0.1"}})
    };
    observer.submit(request("r-1")).await;
    let done = observer.wait_final("r-1", DEADLINE).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        error_message(&done).starts_with("Invalid extra_vars: key 'inventory_hostname' is refused"),
        "{done}"
    );
    drop(w);

    let _w = worker(
        "reserved",
        &broker,
        &playbooks,
        "allow_ansible_vars = true",
        None,
    );
    observer.submit(request("r-2")).await;
    let done = observer.wait_final("r-2", DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    // What the requester asked for when the operator allowed it.
    assert_eq!(done["output"], json!({"host": "127.0.0.1"}), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playbook_list_offers_only_what_a_request_may_name() {
    let broker = Mosquitto::start();
    let playbooks = PlaybookDir::new();
    let pb = playbooks.path();
    std::fs::create_dir(pb.join(".hidden")).unwrap();
    std::fs::write(pb.join(".hidden/site.yml"), "- hosts: all\n").unwrap();
    std::fs::write(pb.join("hosts.ini"), "localhost\n").unwrap();
    std::fs::write(pb.join("hosts.sh"), "#!/bin/sh\necho '{}'\n").unwrap();
    std::fs::set_permissions(pb.join("hosts.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    symlink(pb.join("whoami.yml"), pb.join("alias.yml")).unwrap();
    let port = free_port();
    let w = worker("listing", &broker, &playbooks, "", Some(port));
    let http = Http::new(port);
    http.wait_up(&w);
    let listing = http.get("/api/playbooks").json();
    assert_eq!(
        listing,
        json!({"playbooks": ["alias.yml", "whoami.yml"],
            "inventories": ["hosts.ini", "localhost.yml"]}),
    );
}
