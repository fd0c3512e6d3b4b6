//! The real-Ansible comparison: one 10-task local playbook run directly with
//! `ansible-playbook` and through the worker (publish → final status, through
//! Mosquitto unless only the embedded broker is measured), round after round
//! and in alternating order, so both see the same machine load.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::load::Controller;
use crate::procs::{BrokerChoice, Worker, WorkerConfig, WorkerKind};
use crate::report::{Spread, Table, cell};
use crate::scenario::Bench;

/// Ten cheap tasks that still start a module each, on localhost.
const PLAYBOOK: &str = "- name: Bench
  hosts: all
  connection: local
  gather_facts: false
  tasks:
";

/// localhost with the controller's own Python, so discovery cannot pick
/// another interpreter.
const INVENTORY: &str = "all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: \"{{ ansible_playbook_python }}\"
";

/// Runs the comparison for `rounds` rounds; returns the results table.
pub fn compare(bench: &Bench, ansible_playbook: &Path, rounds: usize) -> Result<String> {
    let dir = bench.scratch.join("ansible");
    let playbooks = dir.join("playbooks");
    std::fs::create_dir_all(&playbooks)?;
    let mut playbook = PLAYBOOK.to_owned();
    for i in 1..=10 {
        playbook.push_str(&format!(
            "    - name: Step {i}\n      ansible.builtin.command: /bin/true\n      changed_when: false\n"
        ));
    }
    std::fs::write(playbooks.join("ten.yml"), playbook)?;
    std::fs::write(playbooks.join("inventory.yml"), INVENTORY)?;
    let group = format!("bench-ansible-{:06x}", fastrand::u32(..0x100_0000));
    let config = WorkerConfig {
        kind: WorkerKind::Ours,
        group: &group,
        playbook_dir: &playbooks,
        ansible_playbook,
        concurrency: 1,
        capacity: 100,
        // Through Mosquitto when it runs: rumqttd's Nagle delays (tens of
        // milliseconds per message, docs/BENCHMARKS.md) are not the worker's.
        broker: bench
            .mosquitto_port
            .map_or(BrokerChoice::Embedded, BrokerChoice::External),
    };
    let mut worker = Worker::spawn(bench.binary, &dir, &config)?;
    worker.wait_ready()?;
    let mut controller = bench
        .runtime
        .block_on(Controller::connect(worker.mqtt_port, &group))?;
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!("real ansible, round {round}/{rounds}");
        let request = json!({
            "task_id": format!("{group}-{round}"),
            "playbook": "ten.yml",
            "inventory": "inventory.yml",
        });
        let mut through_worker = || -> Result<f64> {
            let figures = bench
                .runtime
                .block_on(controller.sequential(std::slice::from_ref(&request)))
                .with_context(|| format!("worker log:\n{}", worker.log_tail()))?;
            Ok(figures.latencies_ms[0] / 1e3)
        };
        // Which goes first alternates, so neither always runs on a machine
        // the other just warmed up (or loaded).
        if round % 2 == 1 {
            direct.push(run_directly(ansible_playbook, &playbooks)?);
            through.push(through_worker()?);
        } else {
            through.push(through_worker()?);
            direct.push(run_directly(ansible_playbook, &playbooks)?);
        }
    }
    let mut table = Table::new(&["10-task local playbook", "seconds"]);
    let direct_spread = Spread::of(direct.iter().copied());
    let through_spread = Spread::of(through.iter().copied());
    table.row([
        "`ansible-playbook` directly".to_owned(),
        cell(direct_spread, 3),
    ]);
    table.row([
        format!(
            "through the worker (publish → final, {})",
            match config.broker {
                BrokerChoice::External(_) => "Mosquitto",
                BrokerChoice::Embedded => "embedded broker",
            }
        ),
        cell(through_spread, 3),
    ]);
    if let (Some(d), Some(t)) = (direct_spread, through_spread) {
        table.row([
            "ratio of the medians (worker / direct)".to_owned(),
            format!("{:.3}", t.median / d.median),
        ]);
    }
    let paired = direct.iter().zip(&through).map(|(d, t)| t / d);
    table.row(["ratio per round".to_owned(), cell(Spread::of(paired), 3)]);
    Ok(table.render().to_owned())
}

/// One direct run in the playbook directory, as the worker runs it; seconds.
fn run_directly(ansible_playbook: &Path, playbooks: &Path) -> Result<f64> {
    let started = Instant::now();
    let status = Command::new(ansible_playbook)
        .args(["-i", "inventory.yml", "ten.yml"])
        .current_dir(playbooks)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", ansible_playbook.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{} failed directly: {status}", ansible_playbook.display());
    }
    Ok(seconds)
}
