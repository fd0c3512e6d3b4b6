//! `ansible-playbook` itself: the test venv's program, the test playbooks, and
//! running a playbook directly to compare with what the worker reports.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::project_dir;

/// `ansible-playbook` from the project's `.venv` (or `$ANSIBLE_PLAYBOOK`).
pub fn ansible_playbook() -> PathBuf {
    if let Some(path) = std::env::var_os("ANSIBLE_PLAYBOOK") {
        return PathBuf::from(path);
    }
    let path = project_dir().join(".venv/bin/ansible-playbook");
    assert!(
        path.exists(),
        "{} is missing: run .ci/run (or scripts/setup) first",
        path.display()
    );
    path
}

/// The test playbooks shipped in `tests/playbooks`.
pub fn playbooks_dir() -> PathBuf {
    project_dir().join("tests/playbooks")
}

/// The PLAY RECAP of running `playbook` directly, summed over hosts:
/// (ok, changed, unreachable, failed, skipped, rescued, ignored).
pub fn recap_of(playbook: &Path, inventory: &Path) -> [u64; 7] {
    let output = Command::new(ansible_playbook())
        .arg(playbook)
        .arg("-i")
        .arg(inventory)
        .current_dir(playbook.parent().unwrap())
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let recap = text.split("PLAY RECAP").nth(1).expect("a PLAY RECAP");
    let mut sums = [0u64; 7];
    let keys = [
        "ok",
        "changed",
        "unreachable",
        "failed",
        "skipped",
        "rescued",
        "ignored",
    ];
    for word in recap.split_whitespace() {
        if let Some((key, value)) = word.split_once('=')
            && let Some(i) = keys.iter().position(|k| *k == key)
        {
            sums[i] += value.parse::<u64>().unwrap();
        }
    }
    sums
}
