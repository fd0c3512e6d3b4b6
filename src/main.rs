//! The `ansible-worker` binary: CLI → config → [`ansible_worker::run`], or
//! the controller commands of [`ansible_worker::submit`].

use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use ansible_worker::cli::{self, Cli, Command};
use ansible_worker::config::{Config, EXAMPLE_CONFIG};
use ansible_worker::submit::{self, Outcome, SubmitError};

fn main() -> ExitCode {
    let cli = Cli::from_args();
    match &cli.command {
        Some(Command::PrintConfig) => {
            print!("{EXAMPLE_CONFIG}");
            return ExitCode::SUCCESS;
        }
        Some(Command::Submit(args)) => return controller(submit::submit(&cli.config, args)),
        Some(Command::Cancel(args)) => return controller(submit::cancel(&cli.config, args)),
        Some(Command::Completions { shell }) => {
            return written(cli::write_completions(*shell, &mut std::io::stdout()));
        }
        Some(Command::Man { dir: Some(dir) }) => return written(cli::write_man_pages(dir)),
        Some(Command::Man { dir: None }) => {
            return written(cli::write_man_page(&mut std::io::stdout()));
        }
        None => {}
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{}: invalid configuration:\n{errors}", cli.config.display());
            return ExitCode::FAILURE;
        }
    };
    if cli.validate {
        println!("{}: configuration is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    init_tracing(&config.log_level);
    ansible_worker::heap::limit_arenas();
    match serve(config) {
        // A second signal may end the runs before its own exit comes: the
        // shutdown then completes, and still leaves with that signal's code.
        Ok(()) => match FORCED_EXIT.load(Ordering::SeqCst) {
            0 => ExitCode::SUCCESS,
            code => ExitCode::from(code),
        },
        Err(e) => {
            // One line on stderr, where the log goes too: not logged as well.
            eprintln!("ansible-worker: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The exit code of a command that only writes something out.
fn written(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader stopped early (`| head`): nothing went wrong here.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ansible-worker: cannot write: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs a `submit` or `cancel` command and maps its result to the exit code.
fn controller(command: impl Future<Output = Result<Outcome, SubmitError>>) -> ExitCode {
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => {
            eprintln!("ansible-worker: cannot start the async runtime: {e}");
            return ExitCode::from(submit::EXIT_ERROR);
        }
    };
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(err) => {
            eprintln!("ansible-worker: {err:#}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn init_tracing(level: &str) {
    // rumqttc is chatty at info, and rumqttd logs every connection and even
    // normal disconnects as errors (MQTT-NOTES.md); RUST_LOG overrides this.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},rumqttc=warn,rumqttd=off")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a terminal, not in files or a supervisor's log.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = StopSignals::listen()?;
    tokio::spawn(stop_on_signals(signals, config.clone(), shutdown.clone()));
    ansible_worker::run(config, shutdown).await?;
    Ok(())
}

/// SIGINT and SIGTERM, listened for from start-up on, so that no signal
/// falls back to the default action (exit without any shutdown).
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn listen() -> anyhow::Result<Self> {
        let listen =
            |kind, name| signal(kind).map_err(|e| anyhow::anyhow!("cannot listen for {name}: {e}"));
        Ok(StopSignals {
            interrupt: listen(SignalKind::interrupt(), "SIGINT")?,
            terminate: listen(SignalKind::terminate(), "SIGTERM")?,
        })
    }

    /// The next signal's name and the exit code a second one leaves with.
    async fn next(&mut self) -> (&'static str, u8) {
        tokio::select! {
            _ = self.interrupt.recv() => ("SIGINT", cli::EXIT_SIGINT),
            _ = self.terminate.recv() => ("SIGTERM", cli::EXIT_SIGTERM),
        }
    }
}

/// The exit code a second stop signal set (0: none came).
static FORCED_EXIT: AtomicU8 = AtomicU8::new(0);

/// The first signal starts the graceful shutdown; a second one, for an
/// operator who will not wait for it, kills every process of the runs and
/// exits at once. No final status is published then: the tasks stay
/// `running` in the journal, and the next start ends them as it ends the
/// runs of a crashed worker.
async fn stop_on_signals(mut signals: StopSignals, config: Config, shutdown: CancellationToken) {
    let (first, _) = signals.next().await;
    tracing::info!("{first} received: shutting down (a second SIGINT or SIGTERM exits at once)");
    shutdown.cancel();
    let (second, code) = signals.next().await;
    FORCED_EXIT.store(code, Ordering::SeqCst);
    tracing::warn!("{second} received during the shutdown: killing the runs and exiting now");
    let killed = ansible_worker::kill_runs(&config.worker).await;
    tracing::warn!(
        killed,
        "exiting without waiting for the runs' final statuses"
    );
    std::process::exit(i32::from(code));
}
