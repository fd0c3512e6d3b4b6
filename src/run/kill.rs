//! Ending a run's whole process tree.
//!
//! Ansible's forked workers call `setsid()`, so they leave the main process's
//! group, and a task may trap SIGTERM (ANSIBLE-NOTES.md). Every process of a
//! run therefore carries a marker variable in its environment (`RUN_MARKER_ENV`
//! = the run's id); after the group signal, `/proc` is searched for that marker
//! and every match is signalled too. This works unprivileged and inside
//! containers. A process that empties its own environment escapes the sweep but
//! not the group signal.
//!
//! A `/proc` scan reads every process's environment: the async functions run
//! it on the blocking pool, so a busy machine's scans never stall the
//! runtime's workers (which also carry the MQTT intake).

use std::fs;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

/// Environment variable that marks every process of one run.
pub const RUN_MARKER_ENV: &str = "ANSIBLE_WORKER_RUN";

/// Processes (other than zombies) whose environment carries `marker`.
pub fn marked_processes(marker: &str) -> Vec<Pid> {
    let needle = format!("{RUN_MARKER_ENV}={marker}");
    processes_with(|var| var == needle.as_bytes())
}

/// Processes whose environment has a variable for which `matches` holds.
fn processes_with(matches: impl Fn(&[u8]) -> bool) -> Vec<Pid> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|byte| *byte == 0).any(&matches))
        })
        .map(Pid::from_raw)
        .collect()
}

/// [`marked_processes`] on the blocking pool.
async fn marked(marker: &str) -> Vec<Pid> {
    let marker = marker.to_owned();
    tokio::task::spawn_blocking(move || marked_processes(&marker))
        .await
        .unwrap_or_default()
}

/// Sends `signal` to the process group `leader` leads and to every marked
/// process. Processes that are already gone are not an error.
pub async fn signal_run(leader: Option<Pid>, marker: &str, signal: Signal) {
    if let Some(leader) = leader {
        let _ = killpg(leader, signal);
    }
    for pid in marked(marker).await {
        let _ = kill(pid, signal);
    }
}

/// Waits until no marked process is left, or `deadline` passes; true when none
/// is left.
pub async fn wait_until_gone(marker: &str, deadline: Instant) -> bool {
    loop {
        if marked(marker).await.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(25)).await;
    }
}

/// SIGKILLs every process left by runs of an earlier worker process that
/// used `runtime_dir` (each run's marker is a directory inside it), until none
/// is left or a few seconds passed; returns how many were found.
pub async fn kill_leftovers(runtime_dir: &std::path::Path) -> usize {
    let prefix = format!("{RUN_MARKER_ENV}={}/", runtime_dir.display());
    let leftovers = || {
        let prefix = prefix.clone();
        tokio::task::spawn_blocking(move || {
            processes_with(|var| var.starts_with(prefix.as_bytes()))
        })
    };
    let found = leftovers().await.unwrap_or_default().len();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = leftovers().await.unwrap_or_default();
        if pids.is_empty() || Instant::now() >= deadline {
            return found;
        }
        for pid in pids {
            let _ = kill(pid, Signal::SIGKILL);
        }
        sleep(Duration::from_millis(25)).await;
    }
}

/// SIGKILLs every marked process until none is left (a process may fork while
/// it is being killed), giving up after a few seconds. When nothing is left,
/// which is the rule after a normal exit, this costs one `/proc` scan.
pub async fn kill_all(leader: Option<Pid>, marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(leader) = leader {
            let _ = killpg(leader, Signal::SIGKILL);
        }
        let pids = marked(marker).await;
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            let _ = kill(pid, Signal::SIGKILL);
        }
        sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[tokio::test]
    async fn sweep_kills_marked_processes_that_left_the_group_and_ignore_term() {
        let marker = format!("unit-{}", std::process::id());
        // A shell that traps SIGTERM and starts a new session for a child, as
        // Ansible's workers do.
        let mut child = Command::new("setsid")
            .args(["sh", "-c", "trap '' TERM; sleep 60 & wait"])
            .env(RUN_MARKER_ENV, &marker)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while marked_processes(&marker).len() < 2 && Instant::now() < deadline {
            sleep(Duration::from_millis(20)).await;
        }
        assert!(marked_processes(&marker).len() >= 2);
        signal_run(None, &marker, Signal::SIGTERM).await;
        assert!(!wait_until_gone(&marker, Instant::now() + Duration::from_millis(300)).await);
        kill_all(None, &marker).await;
        let _ = child.wait();
        assert!(marked_processes(&marker).is_empty());
    }
}
