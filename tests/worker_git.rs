//! `git_pull`: the playbook directory is fast-forwarded before the run; a
//! failing pull ends the task `failed` with git's message and runs nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(status.status.success(), "git {args:?}: {status:?}");
}

fn report_playbook(version: &str) -> String {
    format!(
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.set_stats:\n        \
         data: {{version: \"{version}\"}}\n        aggregate: false\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_pull_updates_the_playbooks_before_the_run() {
    let scratch = tempfile::TempDir::new().unwrap();
    let upstream = scratch.path().join("upstream");
    let checkout = scratch.path().join("checkout");
    std::fs::create_dir(&upstream).unwrap();
    git(&upstream, &["init", "-q", "-b", "main"]);
    std::fs::write(upstream.join("report.yml"), report_playbook("v1")).unwrap();
    std::fs::copy(
        playbooks_dir().join("localhost.yml"),
        upstream.join("localhost.yml"),
    )
    .unwrap();
    git(&upstream, &["add", "."]);
    git(&upstream, &["commit", "-q", "-m", "v1"]);
    git(
        scratch.path(),
        &["clone", "-q", upstream.to_str().unwrap(), "checkout"],
    );
    std::fs::write(upstream.join("report.yml"), report_playbook("v2")).unwrap();
    git(&upstream, &["commit", "-q", "-am", "v2"]);

    let broker = Mosquitto::start();
    let mut setup = WorkerSetup::new("git", broker.port);
    setup.playbook_directory = checkout.clone();
    let _worker = setup.start();
    let observer = Observer::start(broker.port, "git").await;
    observer
        .submit(json!({"task_id": "g-1", "playbook": "report.yml",
                        "inventory": "localhost.yml", "git_pull": true}))
        .await;
    let done = observer.wait_final("g-1", DEADLINE).await;
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(done["output"], json!({"version": "v2"}));

    // An upstream that is gone: the pull fails and nothing runs.
    std::fs::remove_dir_all(&upstream).unwrap();
    observer
        .submit(json!({"task_id": "g-2", "playbook": "report.yml",
                        "inventory": "localhost.yml", "git_pull": true}))
        .await;
    let done = observer.wait_final("g-2", DEADLINE).await;
    assert_eq!(done["state"], "failed", "{done}");
    let message = done["error_message"].as_str().unwrap();
    assert!(message.starts_with("git pull failed: "), "{message}");
    assert!(done["return_code"].is_null(), "the playbook must not run");
    assert_eq!(done["tasks_total"], 0);
}
