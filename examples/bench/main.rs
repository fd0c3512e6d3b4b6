//! End-to-end bench of `ansible-worker` (issue 6, docs/BENCHMARKS.md).
//!
//! Starts the real binary against Mosquitto and against its embedded broker,
//! with a stub `ansible-playbook` that exits 0 at once (by default a static
//! program compiled with `cc`; `--stub shell` for a shell script), so what is
//! measured is the worker's own cost: tasks/s and publish → final status
//! latency for
//! bursts of N requests at concurrency 1 and 4, one-at-a-time latency at
//! concurrency 1, time to `/readyz`, idle and peak RSS. Then the same 10-task
//! playbook run directly and through the worker with the real Ansible.
//!
//! `cargo run --release --example bench -- [--quick] [--rounds N] [--tasks N]`
//! builds the worker binary of the same profile first (or takes `--worker`).

mod ansible;
mod load;
mod procs;
mod report;
mod scenario;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;

use procs::{Mosquitto, WorkerKind};
use report::percentile;
use scenario::{Bench, BrokerKind, RoundFigures, Scenario, StubKind};

/// End-to-end bench of ansible-worker with a stub ansible-playbook.
#[derive(Debug, Parser)]
struct Args {
    /// One round of a few tasks: a smoke run of a few seconds (for CI).
    #[arg(long)]
    quick: bool,
    /// Rounds per figure (default 5; 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Tasks per burst (default 1000; 20 with --quick).
    #[arg(long)]
    tasks: Option<usize>,
    /// Publish each burst this many requests at a time, the next batch once
    /// the previous one finished (default: all at once). With a large
    /// --tasks it shows memory after a history filled over time rather than
    /// by one burst.
    #[arg(long)]
    batch: Option<usize>,
    /// Tasks of the one-at-a-time run at concurrency 1 (default 200; 10 with --quick).
    #[arg(long)]
    seq_tasks: Option<usize>,
    /// Worker concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    concurrency: Vec<usize>,
    /// Brokers to measure.
    #[arg(long, value_delimiter = ',', default_value = "mosquitto,embedded")]
    brokers: Vec<BrokerKind>,
    /// The ansible-worker binary; default: build and use the one of this
    /// example's cargo profile.
    #[arg(long)]
    worker: Option<PathBuf>,
    /// The original MQTT worker's binary (blalabs/ansible-worker, built
    /// outside this repository): each round also measures it through
    /// Mosquitto at its only concurrency, 1, with a YAML config the bench
    /// writes.
    #[arg(long)]
    seed_worker: Option<PathBuf>,
    /// A label printed with the results (e.g. "before the journal").
    #[arg(long)]
    label: Option<String>,
    /// The stub ansible-playbook of the bursts.
    #[arg(long, value_enum, default_value = "native")]
    stub: StubKind,
    /// Run the real-Ansible comparison even with --quick.
    #[arg(long)]
    ansible: bool,
    /// Skip the real-Ansible comparison.
    #[arg(long, conflicts_with = "ansible")]
    no_ansible: bool,
    /// ansible-playbook for the comparison (default: .venv/bin/ansible-playbook).
    #[arg(long)]
    ansible_playbook: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 5 }).max(1);
    let tasks = args
        .tasks
        .unwrap_or(if args.quick { 20 } else { 1000 })
        .max(1);
    let seq_tasks = args.seq_tasks.unwrap_or(if args.quick { 10 } else { 200 });
    let binary = match &args.worker {
        Some(path) => path.clone(),
        None => build_worker()?,
    };
    let ansible_playbook = args
        .ansible_playbook
        .clone()
        .unwrap_or_else(|| project_dir().join(".venv/bin/ansible-playbook"));
    let compare_ansible = !args.no_ansible && (args.ansible || !args.quick);
    if args.seed_worker.is_some() && !args.brokers.contains(&BrokerKind::Mosquitto) {
        bail!("--seed-worker needs the mosquitto broker in --brokers");
    }
    if args.ansible && !ansible_playbook.exists() {
        bail!(
            "{} is missing: run ./scripts/setup",
            ansible_playbook.display()
        );
    }

    let scratch = tempfile::Builder::new()
        .prefix("ansible-worker-bench-")
        .tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    stop_children_on_signal(&runtime, scratch.path().to_owned());
    let fixture = scenario::write_stub_fixture(scratch.path(), args.stub)?;
    let (stub, playbook_dir) = (fixture.stub, fixture.playbook_dir);

    print_header(
        &args,
        &binary,
        rounds,
        tasks,
        seq_tasks,
        (fixture.kind, &stub),
    )?;
    let mosquitto = if args.brokers.contains(&BrokerKind::Mosquitto) {
        Some(Mosquitto::start(scratch.path())?)
    } else {
        None
    };
    let bench = Bench {
        runtime: &runtime,
        binary: &binary,
        seed_binary: args.seed_worker.as_deref(),
        scratch: scratch.path(),
        playbook_dir: &playbook_dir,
        stub: &stub,
        mosquitto_port: mosquitto.as_ref().map(|m| m.port),
        tasks,
        batch: args.batch.unwrap_or(tasks).max(1),
        sequential_tasks: seq_tasks,
    };
    let seed = args.seed_worker.as_ref().map(|_| Scenario {
        worker: WorkerKind::Seed,
        broker: BrokerKind::Mosquitto,
        concurrency: 1,
    });
    let scenarios: Vec<Scenario> = seed
        .into_iter()
        .chain(args.brokers.iter().flat_map(|&broker| {
            args.concurrency.iter().map(move |&concurrency| Scenario {
                worker: WorkerKind::Ours,
                broker,
                concurrency,
            })
        }))
        .collect();
    let mut results: Vec<(Scenario, Vec<RoundFigures>)> =
        scenarios.iter().map(|s| (*s, Vec::new())).collect();
    for round in 1..=rounds {
        for (scenario, figures) in &mut results {
            eprintln!(
                "round {round}/{rounds}: {}, {} broker, concurrency {}",
                scenario.worker, scenario.broker, scenario.concurrency
            );
            figures.push(bench.round(round, *scenario)?);
        }
    }
    println!("{}", scenario::table(&results));
    if let Some(ratios) = scenario::beside_original(&results) {
        println!("{ratios}");
    }

    if compare_ansible {
        if ansible_playbook.exists() {
            println!("{}", ansible::compare(&bench, &ansible_playbook, rounds)?);
        } else {
            println!(
                "Real-Ansible comparison skipped: {} is missing.",
                ansible_playbook.display()
            );
        }
    }
    Ok(())
}

/// The checkout this example belongs to.
fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the worker binary with the cargo profile and target directory this
/// example was built with (a no-op when it is up to date) and returns its path.
fn build_worker() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // <target>/<profile>/examples/bench
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target directory; pass --worker")?;
    let target_dir = profile_dir
        .parent()
        .context("no target directory; pass --worker")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => bail!("cannot tell the cargo profile; pass --worker"),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--bins", "--profile", profile, "--manifest-path"])
        .arg(project_dir().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .context("cannot run cargo to build the worker; pass --worker")?;
    if !status.success() {
        bail!("building the worker failed ({status})");
    }
    Ok(profile_dir.join("ansible-worker"))
}

/// On SIGINT or SIGTERM, stops the children and removes the scratch
/// directory before exiting (the guards' drops would not run).
fn stop_children_on_signal(runtime: &tokio::runtime::Runtime, scratch: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    runtime.spawn(async move {
        let (Ok(mut interrupt), Ok(mut terminate)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("interrupted: stopping the bench's processes");
        procs::stop_all_children();
        let _ = std::fs::remove_dir_all(&scratch);
        std::process::exit(130);
    });
}

/// Date, machine, worker build and settings, as a Markdown list.
fn print_header(
    args: &Args,
    binary: &Path,
    rounds: usize,
    tasks: usize,
    seq_tasks: usize,
    (stub_kind, stub): (StubKind, &Path),
) -> Result<()> {
    let version = capture(Command::new(binary).arg("--version"))
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let commit = capture(Command::new("git").arg("-C").arg(project_dir()).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]))
    .unwrap_or_else(|_| "unknown".to_owned());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    if let Some(label) = &args.label {
        println!("## {label}\n");
    }
    println!(
        "- date: {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!("- machine: {cores} cores available, CPU {cpu}");
    println!("- worker: {version} at `{}`", binary.display());
    if let Some(seed) = &args.seed_worker {
        println!("- original worker: `{}`", seed.display());
    }
    println!("- bench source: commit {commit}");
    println!(
        "- settings: {rounds} round(s) per figure, {tasks} tasks per burst{}, \
         {seq_tasks} one-at-a-time tasks at concurrency 1",
        match args.batch {
            Some(batch) if batch < tasks => format!(" ({batch} at a time)"),
            _ => String::new(),
        }
    );
    println!(
        "- floor: spawning and reaping the {} stub ansible-playbook takes {:.2} ms (median of 50)",
        match stub_kind {
            StubKind::Native => "native",
            StubKind::Shell => "shell",
        },
        spawn_floor_ms(stub)?
    );
    println!("- cells: median (min–max) over the rounds; latencies are publish → final status\n");
    Ok(())
}

/// The median time to spawn the stub and wait for it: what any worker pays
/// per task before its own overhead.
fn spawn_floor_ms(stub: &Path) -> Result<f64> {
    let mut times = Vec::with_capacity(50);
    for _ in 0..50 {
        let started = Instant::now();
        Command::new(stub).status()?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(percentile(&times, 50.0))
}

/// A command's trimmed stdout; an error unless it exits 0.
fn capture(command: &mut Command) -> Result<String> {
    let output = command.output()?;
    if !output.status.success() {
        bail!("{command:?} failed");
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
