//! The README's "Try it" section, run as written against the appliance:
//! its ```sh blocks in order, in one shell, from the repository root. Only
//! where they reach the appliance changes: `./target/release/ansible-worker`
//! becomes the binary under test with this test's config, and Mosquitto's
//! clients take this test's port from their per-user option files
//! (`$XDG_CONFIG_HOME/mosquitto_pub`, `.../mosquitto_sub`). Then what the
//! text says they end with is checked.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tempfile::TempDir;

/// The ```sh blocks of the README's "Try it" section, in order.
fn try_it_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(project_dir().join("README.md")).unwrap();
    let section = readme
        .split("\n## Try it\n")
        .nth(1)
        .expect("README has a \"Try it\" section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sh\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap().to_owned())
        .collect()
}

/// The shell running the blocks, and what it left running in the
/// background (the followers).
struct Shell {
    scratch: TempDir,
    child: Child,
}

impl Shell {
    /// What the blocks printed so far (stdout and stderr).
    fn output(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("output")).unwrap_or_default()
    }

    /// Tells the shell to stop its followers (as `kill %1 %2` would) and
    /// waits until it did; true if it exited 0.
    fn finish(&mut self) -> bool {
        std::fs::write(self.scratch.path().join("stop"), "").unwrap();
        let mut status = None;
        wait_until(Duration::from_secs(20), || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.is_some_and(|s| s.success())
    }
}

impl Drop for Shell {
    /// Whatever is left (after a failed assertion), found by the option
    /// files' directory in its environment.
    fn drop(&mut self) {
        kill_processes_mentioning(&self.scratch.path().display().to_string());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `blocks` in one bash, each followed by a line with its exit code,
/// against the appliance `config` with its MQTT 5 listener on `port`.
fn run_blocks(blocks: &[String], config: &std::path::Path, port: u16) -> Shell {
    let scratch = TempDir::new().unwrap();
    for client in ["mosquitto_pub", "mosquitto_sub"] {
        std::fs::write(scratch.path().join(client), format!("-p {port}\n")).unwrap();
    }
    let binary = format!(
        "{} -c {}",
        env!("CARGO_BIN_EXE_ansible-worker"),
        config.display()
    );
    let mut script = String::new();
    for (i, block) in blocks.iter().enumerate() {
        script.push_str(&block.replace("./target/release/ansible-worker", &binary));
        script.push_str(&format!("echo \"--- block {i} exit $?\"\n"));
    }
    // The followers run until the test has seen what it waits for; then
    // the shell stops and reaps them.
    script.push_str(
        "while [ ! -e \"$XDG_CONFIG_HOME/stop\" ]; do sleep 0.1; done\nkill $(jobs -p)\nwait\n",
    );
    let output = std::fs::File::create(scratch.path().join("output")).unwrap();
    let child = Command::new("bash")
        .args(["-c", &script])
        .current_dir(project_dir())
        .env("XDG_CONFIG_HOME", scratch.path())
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .unwrap();
    Shell { scratch, child }
}

/// The JSON documents printed after `prefix` on lines that start with it,
/// in order.
fn docs_after(output: &str, prefix: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .filter_map(|rest| serde_json::from_str(rest.trim()).ok())
        .collect()
}

fn states(docs: &[Value]) -> Vec<&str> {
    docs.iter()
        .map(|d| d["state"].as_str().unwrap_or("?"))
        .collect()
}

#[test]
fn try_it_runs_as_written_and_ends_as_the_text_says() {
    let blocks = try_it_blocks();
    assert_eq!(blocks.len(), 4, "the test knows four blocks: {blocks:#?}");
    let ports = Ports::free();
    let appliance = Worker::with_config(|dir| example_config(dir, &ports));
    appliance.wait_log("subscribed", Duration::from_secs(20));
    let mut shell = run_blocks(&blocks, &appliance.config_path(), ports.v5);

    let hello_1 = "ansible/lab/tasks/hello-1/status ";
    let slow_1 = "ansible/lab/tasks/slow-1/status ";
    let replies = "replies/me order-42 ";
    let ended = |prefix: &str, output: &str| docs_after(output, prefix).iter().any(is_final);
    assert!(
        wait_until(DEADLINE, || {
            let output = shell.output();
            output.contains("--- block 3 exit")
                && ended(hello_1, &output)
                && ended(slow_1, &output)
                && ended(replies, &output)
        }),
        "the blocks did not finish:\n{}",
        shell.output()
    );
    assert!(shell.finish(), "the shell did not stop its followers");
    let output = shell.output();
    for i in 0..blocks.len() {
        assert!(
            output.contains(&format!("--- block {i} exit 0")),
            "block {i} failed:\n{output}"
        );
    }

    // `submit --wait`: a line per status, then the output.
    let submit = output.split("--- block 0 exit").next().unwrap();
    assert!(submit.contains(" queued "), "{submit}");
    assert!(submit.contains(" success "), "{submit}");
    assert!(
        submit.contains(r#""greeting": "Hello from localhost""#),
        "{submit}"
    );

    // The follower: presence, then hello-1 queued, running, success.
    let presence = docs_after(&output, "ansible/lab/workers/lab-1 ");
    assert_eq!(presence[0]["state"], "online", "{output}");
    let hello = docs_after(&output, hello_1);
    let seen = states(&hello);
    assert_eq!(seen.first(), Some(&"queued"), "{output}");
    assert!(seen.contains(&"running"), "{output}");
    assert_eq!(seen.last(), Some(&"success"), "{output}");
    assert_eq!(
        hello.last().unwrap()["output"]["greeting"],
        "Hello from localhost"
    );

    // The cancel.
    let slow = docs_after(&output, slow_1);
    let seen = states(&slow);
    assert_eq!(seen.first(), Some(&"queued"), "{output}");
    assert!(seen.contains(&"running"), "{output}");
    assert_eq!(seen.last(), Some(&"cancelled"), "{output}");
    assert_eq!(
        slow.last().unwrap()["error_message"],
        "Cancelled: not needed"
    );

    // Request/response: every status of hello-2 with the correlation data.
    let replied = docs_after(&output, replies);
    assert!(
        replied.iter().all(|d| d["task_id"] == "hello-2"),
        "{output}"
    );
    let seen = states(&replied);
    assert_eq!(seen.first(), Some(&"queued"), "{output}");
    assert_eq!(seen.last(), Some(&"success"), "{output}");
}
