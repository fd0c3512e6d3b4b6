//! Command-line interface (clap derive). Parsing only; `main` acts on it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Runs Ansible playbooks on request over MQTT 5.
#[derive(Debug, Parser)]
#[command(name = "ansible-worker", version, about)]
pub struct Cli {
    /// The configuration file.
    #[arg(short, long, default_value = "config.toml", global = true)]
    pub config: PathBuf,
    /// Check the configuration, list every problem, and exit 0 (valid) or 1.
    #[arg(long)]
    pub validate: bool,
    /// What to do; without a command the worker runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the annotated example configuration.
    PrintConfig,
}
