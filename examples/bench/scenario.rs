//! One round of one scenario: a fresh worker (given broker, given
//! concurrency) against a stub `ansible-playbook`, timed from start to ready,
//! then loaded with a burst of tasks (and, at concurrency 1, a sequence).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use tokio::runtime::Runtime;

use crate::load::{BatchFigures, Controller};
use crate::procs::{BrokerChoice, Worker, WorkerConfig, WorkerKind};
use crate::report::{Spread, Table, cell, percentile};

/// Which broker a scenario goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerKind {
    /// An external Mosquitto started by the bench.
    Mosquitto,
    /// The worker's embedded rumqttd.
    Embedded,
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerKind::Mosquitto => "mosquitto",
            BrokerKind::Embedded => "embedded",
        })
    }
}

/// A worker program, a broker and a worker concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// The program measured.
    pub worker: WorkerKind,
    /// The broker.
    pub broker: BrokerKind,
    /// `worker.concurrency`.
    pub concurrency: usize,
}

/// What every round shares.
pub struct Bench<'a> {
    /// The tokio runtime the MQTT client runs on.
    pub runtime: &'a Runtime,
    /// The `ansible-worker` binary.
    pub binary: &'a Path,
    /// The original worker's binary (`--seed-worker`), if it is measured.
    pub seed_binary: Option<&'a Path>,
    /// Directory for the rounds' own directories.
    pub scratch: &'a Path,
    /// Directory with `noop.yml` and `inventory.yml`.
    pub playbook_dir: &'a Path,
    /// The stub `ansible-playbook`.
    pub stub: &'a Path,
    /// Mosquitto's port, if it runs.
    pub mosquitto_port: Option<u16>,
    /// Tasks per burst.
    pub tasks: usize,
    /// Requests of a burst published at once (the next batch after the
    /// previous one finished).
    pub batch: usize,
    /// Tasks of the sequential run (concurrency 1 only); 0 for none.
    pub sequential_tasks: usize,
}

/// The figures of one round of one scenario.
#[derive(Debug, Clone)]
pub struct RoundFigures {
    /// Process start → `/readyz` 200, in milliseconds.
    pub ready_ms: f64,
    /// VmRSS right after ready, in MiB.
    pub idle_rss_mib: f64,
    /// VmRSS after all tasks (all of them in the history), in MiB.
    pub end_rss_mib: f64,
    /// VmHWM after all tasks, in MiB.
    pub peak_rss_mib: f64,
    /// All tasks published at once.
    pub burst: BatchFigures,
    /// CPU time of the worker's own threads during the burst, per task, in
    /// milliseconds.
    pub burst_cpu_ms_per_task: f64,
    /// One task at a time (concurrency 1 only).
    pub sequential: Option<BatchFigures>,
}

impl Bench<'_> {
    /// Runs `scenario` once with a fresh worker.
    pub fn round(&self, round: usize, scenario: Scenario) -> Result<RoundFigures> {
        let group = format!(
            "bench-{round}-{}-{}-c{}-{:06x}",
            scenario.worker,
            scenario.broker,
            scenario.concurrency,
            fastrand::u32(..0x100_0000)
        );
        let dir = self.scratch.join(&group);
        std::fs::create_dir_all(&dir)?;
        let broker = match scenario.broker {
            BrokerKind::Mosquitto => {
                BrokerChoice::External(self.mosquitto_port.context("mosquitto is not running")?)
            }
            BrokerKind::Embedded => BrokerChoice::Embedded,
        };
        let binary = match scenario.worker {
            WorkerKind::Ours => self.binary,
            WorkerKind::Seed => self.seed_binary.context("no --seed-worker given")?,
        };
        let config = WorkerConfig {
            kind: scenario.worker,
            group: &group,
            playbook_dir: self.playbook_dir,
            ansible_playbook: self.stub,
            concurrency: scenario.concurrency,
            capacity: (self.tasks + self.sequential_tasks).max(100),
            broker,
        };
        let mut worker = Worker::spawn(binary, &dir, &config)?;
        let ready = worker.wait_ready()?;
        let idle_rss_mib = worker.rss_mib()?;
        let sequential_tasks = if scenario.concurrency == 1 {
            self.sequential_tasks
        } else {
            0
        };
        let (burst, burst_cpu_ms, sequential) = self
            .runtime
            .block_on(async {
                let mut controller = Controller::connect(worker.mqtt_port, &group).await?;
                let cpu_before = worker.cpu_ms()?;
                let burst = controller
                    .burst(&requests(&group, "b", self.tasks), self.batch)
                    .await?;
                let burst_cpu_ms = worker.cpu_ms()? - cpu_before;
                let sequential = match sequential_tasks {
                    0 => None,
                    n => Some(controller.sequential(&requests(&group, "s", n)).await?),
                };
                anyhow::Ok((burst, burst_cpu_ms, sequential))
            })
            .with_context(|| format!("{group}; worker log:\n{}", worker.log_tail()))?;
        let end_rss_mib = worker.rss_mib()?;
        let peak_rss_mib = worker.peak_rss_mib()?;
        drop(worker);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(RoundFigures {
            ready_ms: ready.as_secs_f64() * 1e3,
            idle_rss_mib,
            end_rss_mib,
            peak_rss_mib,
            burst,
            burst_cpu_ms_per_task: burst_cpu_ms / self.tasks as f64,
            sequential,
        })
    }
}

/// `count` requests for the stub playbook with ids unique to this run.
fn requests(group: &str, kind: &str, count: usize) -> Vec<serde_json::Value> {
    (0..count)
        .map(|i| {
            json!({
                "task_id": format!("{group}-{kind}{i}"),
                "playbook": "noop.yml",
                "inventory": "inventory.yml",
            })
        })
        .collect()
}

/// Which stub `ansible-playbook` a bench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StubKind {
    /// A static executable that only calls `exit(0)`, compiled with `cc`
    /// (about 0.1 ms of CPU per run): the worker's own cost stands out.
    Native,
    /// `#!/bin/sh` + `exit 0` (about 0.9 ms of CPU per run, starting a shell).
    Shell,
}

/// A static program that exits 0 without a C library: `_start` makes the
/// exit system call (x86-64 and AArch64; elsewhere a static `main`).
const NATIVE_STUB: &str = r#"
#if defined(__x86_64__)
void _start(void) { __asm__ volatile("mov $60, %eax\n xor %edi, %edi\n syscall"); }
#elif defined(__aarch64__)
void _start(void) { __asm__ volatile("mov x8, #93\n mov x0, #0\n svc #0"); }
#else
int main(void) { return 0; }
#endif
"#;

/// The stub `ansible-playbook` a bench runs and the directory of its
/// playbooks.
pub struct StubFixture {
    /// The stub.
    pub stub: PathBuf,
    /// What the stub is: a native one falls back to the shell when `cc`
    /// cannot build it.
    pub kind: StubKind,
    /// Holds an empty `noop.yml` and `inventory.yml`.
    pub playbook_dir: PathBuf,
}

/// Writes the stub `ansible-playbook` (exits 0 at once) and a playbook
/// directory with an empty `noop.yml` and `inventory.yml`. A native stub is
/// compiled with `cc`; without a working `cc` the shell stub is used, with a
/// warning.
pub fn write_stub_fixture(root: &Path, kind: StubKind) -> Result<StubFixture> {
    use std::os::unix::fs::PermissionsExt;
    let stub = root.join("bin/ansible-playbook");
    std::fs::create_dir_all(root.join("bin"))?;
    let kind = match kind {
        StubKind::Native => match compile_native_stub(root, &stub) {
            Ok(()) => StubKind::Native,
            Err(e) => {
                eprintln!("warning: {e:#}; measuring with the shell stub");
                StubKind::Shell
            }
        },
        StubKind::Shell => StubKind::Shell,
    };
    if kind == StubKind::Shell {
        std::fs::write(&stub, "#!/bin/sh\nexit 0\n")?;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755))?;
    }
    let playbooks = root.join("playbooks");
    std::fs::create_dir_all(&playbooks)?;
    std::fs::write(playbooks.join("noop.yml"), "")?;
    std::fs::write(playbooks.join("inventory.yml"), "")?;
    Ok(StubFixture {
        stub,
        kind,
        playbook_dir: playbooks,
    })
}

/// Builds [`NATIVE_STUB`] into `stub` with `cc`.
fn compile_native_stub(root: &Path, stub: &Path) -> Result<()> {
    let source = root.join("bin/stub.c");
    std::fs::write(&source, NATIVE_STUB)?;
    let mut cc = std::process::Command::new("cc");
    cc.args(["-O2", "-static", "-o"]).arg(stub).arg(&source);
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        cc.args(["-nostdlib", "-fno-stack-protector"]);
    }
    let output = cc
        .output()
        .context("cannot run cc to build the native stub")?;
    if !output.status.success() {
        anyhow::bail!(
            "cc could not build the native stub: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The results table: one row per scenario, each cell the median over the
/// rounds with min and max.
pub fn table(results: &[(Scenario, Vec<RoundFigures>)]) -> String {
    let mut table = Table::new(&[
        "worker",
        "broker",
        "concurrency",
        "tasks/s",
        "burst p50 ms",
        "burst p99 ms",
        "seq p50 ms",
        "seq p99 ms",
        "statuses/task",
        "worker CPU ms/task",
        "start→ready ms",
        "idle RSS MiB",
        "end RSS MiB",
        "peak RSS MiB",
    ]);
    for (scenario, rounds) in results {
        let of = |f: &dyn Fn(&RoundFigures) -> Option<f64>| Spread::of(rounds.iter().filter_map(f));
        let seq = |p: f64| of(&|r| Some(percentile(&r.sequential.as_ref()?.latencies_ms, p)));
        table.row([
            scenario.worker.to_string(),
            scenario.broker.to_string(),
            scenario.concurrency.to_string(),
            cell(of(&|r| Some(r.burst.tasks_per_sec)), 0),
            cell(of(&|r| Some(percentile(&r.burst.latencies_ms, 50.0))), 1),
            cell(of(&|r| Some(percentile(&r.burst.latencies_ms, 99.0))), 1),
            cell(seq(50.0), 2),
            cell(seq(99.0), 2),
            cell(of(&|r| Some(r.burst.statuses_per_task)), 1),
            cell(of(&|r| Some(r.burst_cpu_ms_per_task)), 2),
            cell(of(&|r| Some(r.ready_ms)), 0),
            cell(of(&|r| Some(r.idle_rss_mib)), 1),
            cell(of(&|r| Some(r.end_rss_mib)), 1),
            cell(of(&|r| Some(r.peak_rss_mib)), 1),
        ]);
    }
    table.render().to_owned()
}

/// With the original worker measured: each of our scenarios against it,
/// round by round (tasks/s and worker CPU per task of the same round
/// divided by the original's), as a Markdown table. Ratios inside a round
/// hold up on a machine whose speed drifts between rounds, where the
/// medians of the rows above may come from different minutes.
pub fn beside_original(results: &[(Scenario, Vec<RoundFigures>)]) -> Option<String> {
    let (_, original) = results
        .iter()
        .find(|(scenario, _)| scenario.worker == WorkerKind::Seed)?;
    let mut table = Table::new(&[
        "worker",
        "broker",
        "concurrency",
        "tasks/s ÷ original's, per round",
        "worker CPU per task ÷ original's, per round",
    ]);
    for (scenario, rounds) in results {
        if scenario.worker == WorkerKind::Seed {
            continue;
        }
        let ratio = |figure: fn(&RoundFigures) -> f64| {
            round_ratios(
                &rounds.iter().map(figure).collect::<Vec<_>>(),
                &original.iter().map(figure).collect::<Vec<_>>(),
            )
        };
        table.row([
            scenario.worker.to_string(),
            scenario.broker.to_string(),
            scenario.concurrency.to_string(),
            cell(ratio(|r| r.burst.tasks_per_sec), 2),
            cell(ratio(|r| r.burst_cpu_ms_per_task), 2),
        ]);
    }
    Some(table.render().to_owned())
}

/// The spread of `ours[i] / original[i]` over the rounds both have, leaving
/// out rounds where the original's figure is 0.
fn round_ratios(ours: &[f64], original: &[f64]) -> Option<Spread> {
    Spread::of(
        ours.iter()
            .zip(original)
            .filter(|(_, original)| **original > 0.0)
            .map(|(ours, original)| ours / original),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_the_rounds_and_skip_an_original_zero() {
        let spread = round_ratios(&[4.0, 3.0, 9.0, 5.0], &[2.0, 1.0, 0.0, 5.0]).unwrap();
        // 2, 3 and 1: the third round has no original figure.
        assert_eq!((spread.median, spread.min, spread.max), (2.0, 1.0, 3.0));
        assert!(round_ratios(&[1.0], &[0.0]).is_none());
    }
}
