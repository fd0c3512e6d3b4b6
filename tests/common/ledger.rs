//! A ledger file that `tests/playbooks/ledger.yml` appends each run's task id
//! to: it counts how many times each task really ran.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// A request for `ledger.yml` that records `id` in `ledger` and then sleeps
/// `seconds`.
pub fn ledger_request(id: &str, ledger: &Path, seconds: u64) -> Value {
    json!({
        "task_id": id, "playbook": "ledger.yml", "inventory": "localhost.yml",
        "extra_vars": {"task_id": id, "out_file": ledger.display().to_string(), "seconds": seconds}
    })
}

/// How many times each task id ran.
pub fn ledger_counts(ledger: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in std::fs::read_to_string(ledger).unwrap_or_default().lines() {
        *counts.entry(id.to_owned()).or_default() += 1;
    }
    counts
}

/// A ledger file in a temp dir of its own.
pub struct Ledger {
    _dir: tempfile::TempDir,
    /// The file.
    pub path: PathBuf,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("ledger.txt");
        Ledger { _dir: dir, path }
    }
}
