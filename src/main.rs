//! The `ansible-worker` binary: CLI → config → [`ansible_worker::run`], or
//! the controller commands of [`ansible_worker::submit`].

use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use ansible_worker::cli::{Cli, Command};
use ansible_worker::config::{Config, EXAMPLE_CONFIG};
use ansible_worker::submit::{self, Outcome, SubmitError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::PrintConfig) => {
            print!("{EXAMPLE_CONFIG}");
            return ExitCode::SUCCESS;
        }
        Some(Command::Submit(args)) => return controller(submit::submit(&cli.config, args)),
        Some(Command::Cancel(args)) => return controller(submit::cancel(&cli.config, args)),
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
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ansible-worker: {e:#}");
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
    let signalled = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signalled.cancel();
    });
    ansible_worker::run(config, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
