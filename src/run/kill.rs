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
//! Reading a process's environment is the costly part of a scan, so a scan
//! soon after the run started reads only the processes whose pids were
//! allocated since its leader's (`PidWindow`); the rest cannot belong to
//! the run. Nor can the main processes of the other runs under way
//! ([`Leaders`]), which such a window holds whenever runs overlap: they are
//! skipped. Scans run on the blocking pool, so a busy machine's scans never
//! stall the runtime's workers (which also carry the MQTT intake).

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

/// Environment variable that marks every process of one run.
pub const RUN_MARKER_ENV: &str = "ANSIBLE_WORKER_RUN";

/// How long after a run's start its pid window is trusted. Pids are handed
/// out in a cycle; a window is wrong only once the counter went all the way
/// round (at least 32,768 processes and threads created), which cannot
/// happen in this time.
const WINDOW_TRUSTED: Duration = Duration::from_millis(100);

/// Windows up to this many pids are probed pid by pid instead of listing
/// `/proc`.
const PROBED_PIDS: i32 = 256;

/// The pids allocated since a run's leader was (`first`, the leader's own,
/// included): every process of the run has one.
#[derive(Debug, Clone, Copy)]
struct PidWindow {
    first: i32,
}

impl PidWindow {
    /// Whether `pid` was allocated at or after `first`, given that `last`
    /// is the newest pid allocated (the counter may have wrapped once).
    fn holds(self, pid: i32, last: i32) -> bool {
        if last >= self.first {
            (self.first..=last).contains(&pid)
        } else {
            pid >= self.first || pid <= last
        }
    }
}

/// The newest pid allocated in this pid namespace. The file stays open:
/// each read at its start is one system call.
fn last_pid() -> Option<i32> {
    static NS_LAST_PID: OnceLock<Option<File>> = OnceLock::new();
    let file = NS_LAST_PID
        .get_or_init(|| File::open("/proc/sys/kernel/ns_last_pid").ok())
        .as_ref()?;
    let mut text = [0u8; 16];
    let read = file.read_at(&mut text, 0).ok()?;
    std::str::from_utf8(&text[..read]).ok()?.trim().parse().ok()
}

/// The main processes of the runs under way, each its own run's process
/// group leader and marked with its own run's marker.
#[derive(Debug, Default)]
pub struct Leaders(Mutex<HashSet<i32>>);

impl Leaders {
    /// Counts `leader` as under way until the returned guard is dropped, at
    /// the latest when the process is reaped: its pid is free then, for
    /// any process to take.
    pub fn enter(self: &Arc<Self>, leader: Pid) -> LeaderGuard {
        self.lock().insert(leader.as_raw());
        LeaderGuard {
            leaders: self.clone(),
            leader,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A run's main process counted in [`Leaders`]; dropping it stops that.
#[derive(Debug)]
pub struct LeaderGuard {
    leaders: Arc<Leaders>,
    leader: Pid,
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        self.leaders.lock().remove(&self.leader.as_raw());
    }
}

/// Processes (other than zombies) whose environment carries `marker`.
pub fn marked_processes(marker: &str) -> Vec<Pid> {
    marked_in(marker, None)
}

/// [`marked_processes`], reading only pids inside `window` when there is one.
fn marked_in(marker: &str, window: Option<PidWindow>) -> Vec<Pid> {
    let needle = format!("{RUN_MARKER_ENV}={marker}");
    processes_with(window, |var| var == needle.as_bytes())
}

/// Processes whose environment has a variable for which `matches` holds.
fn processes_with(window: Option<PidWindow>, matches: impl Fn(&[u8]) -> bool) -> Vec<Pid> {
    let candidates = match window {
        Some(window) => pids_in(window),
        None => listed_pids(),
    };
    matching(candidates, matches)
}

/// Those of `candidates` whose environment has a variable for which
/// `matches` holds.
fn matching(candidates: Vec<i32>, matches: impl Fn(&[u8]) -> bool) -> Vec<Pid> {
    candidates
        .into_iter()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|byte| *byte == 0).any(&matches))
        })
        .map(Pid::from_raw)
        .collect()
}

/// The pids `/proc` lists (processes, not their other threads).
fn listed_pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// The pids inside `window` that may be in use. A short window is cheaper
/// to probe pid by pid than to list `/proc`; a probed pid may be a thread's,
/// whose environment is its process's (and signalling it signals the
/// process).
fn pids_in(window: PidWindow) -> Vec<i32> {
    match short_window(window) {
        Some(pids) => pids,
        None => {
            let listed = listed_pids();
            // Read after the listing: every pid listed was allocated by then.
            match last_pid() {
                Some(last) => listed
                    .into_iter()
                    .filter(|pid| window.holds(*pid, last))
                    .collect(),
                None => listed,
            }
        }
    }
}

/// The pids of `window` when it is short enough to probe pid by pid.
fn short_window(window: PidWindow) -> Option<Vec<i32>> {
    let last = last_pid()?;
    (window.first <= last && last - window.first < PROBED_PIDS)
        .then(|| (window.first..=last).collect())
}

/// The processes of one run: the process group its leader leads and every
/// process that carries its marker.
#[derive(Debug, Clone)]
pub struct RunProcesses {
    leader: Option<Pid>,
    marker: String,
    started: Instant,
    /// The main processes of all runs under way, this one's included.
    others: Option<Arc<Leaders>>,
}

impl RunProcesses {
    /// The processes of the run marked `marker` whose main process, if it
    /// started, is `leader`, started just now.
    pub fn new(leader: Option<Pid>, marker: &str) -> Self {
        RunProcesses {
            leader,
            marker: marker.to_owned(),
            started: Instant::now(),
            others: None,
        }
    }

    /// The same processes, whose scans skip the other runs' main processes
    /// counted in `leaders`.
    pub fn besides(self, leaders: Arc<Leaders>) -> Self {
        RunProcesses {
            others: Some(leaders),
            ..self
        }
    }

    /// The marked processes. A short pid window (the rule right after a
    /// normal exit) is probed in place: a few reads cost less than the two
    /// thread wake-ups of a hop to the blocking pool, where a whole `/proc`
    /// scan goes.
    async fn marked(&self) -> Vec<Pid> {
        let window = self
            .leader
            .filter(|_| self.started.elapsed() < WINDOW_TRUSTED)
            .map(|leader| PidWindow {
                first: leader.as_raw(),
            });
        if let Some(pids) = window.and_then(short_window) {
            let pids = self.worth_probing(pids);
            let needle = format!("{RUN_MARKER_ENV}={}", self.marker);
            return matching(pids, |var| var == needle.as_bytes());
        }
        let marker = self.marker.clone();
        let found = tokio::task::spawn_blocking(move || marked_in(&marker, window))
            .await
            .unwrap_or_default();
        found
            .into_iter()
            .filter(|pid| !self.is_another_leader(pid.as_raw()))
            .collect()
    }

    /// Those of the short window's `pids` whose environment may tell: not
    /// another run's main process, nor this run's once it was reaped. Its
    /// pid is free then, and within the short window's lifetime only a
    /// wrap of the whole pid space could hand it out again; after a normal
    /// exit that leaves nothing to read (the rule: one run, no descendants).
    fn worth_probing(&self, mut pids: Vec<i32>) -> Vec<i32> {
        let Some(others) = &self.others else {
            return pids;
        };
        let own = self.leader.map(Pid::as_raw);
        let counted = others.lock();
        pids.retain(|pid| (Some(*pid) == own) == counted.contains(pid));
        pids
    }

    /// Whether `pid` is the main process of another run under way.
    fn is_another_leader(&self, pid: i32) -> bool {
        self.leader.map(Pid::as_raw) != Some(pid)
            && self
                .others
                .as_ref()
                .is_some_and(|others| others.lock().contains(&pid))
    }

    /// Sends `signal` to the group and to every marked process. Processes
    /// that are already gone are not an error.
    pub async fn signal(&self, signal: Signal) {
        if let Some(leader) = self.leader {
            let _ = killpg(leader, signal);
        }
        for pid in self.marked().await {
            let _ = kill(pid, signal);
        }
    }

    /// Waits until no marked process is left, or `deadline` passes; true
    /// when none is left.
    pub async fn wait_until_gone(&self, deadline: Instant) -> bool {
        loop {
            if self.marked().await.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILLs the group and every marked process until none is left (a
    /// process may fork while it is being killed), giving up after a few
    /// seconds. When nothing is left, which is the rule after a normal exit,
    /// this costs one `/proc` scan.
    pub async fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(leader) = self.leader {
                let _ = killpg(leader, Signal::SIGKILL);
            }
            let pids = self.marked().await;
            if pids.is_empty() || Instant::now() >= deadline {
                return;
            }
            for pid in pids {
                let _ = kill(pid, Signal::SIGKILL);
            }
            sleep(Duration::from_millis(25)).await;
        }
    }
}

/// SIGKILLs every process of the runs that use `runtime_dir` (each run's
/// marker is a directory inside it), until none is left or a few seconds
/// passed; returns how many were found. At start these are left by an
/// earlier worker process; at an immediate exit, the worker's own.
pub async fn kill_leftovers(runtime_dir: &std::path::Path) -> usize {
    let prefix = format!("{RUN_MARKER_ENV}={}/", runtime_dir.display());
    let leftovers = || {
        let prefix = prefix.clone();
        tokio::task::spawn_blocking(move || {
            processes_with(None, |var| var.starts_with(prefix.as_bytes()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    /// A shell that traps SIGTERM and starts a new session for a child, as
    /// Ansible's workers do; returns once both carry `marker`.
    async fn escaping_tree(marker: &str) -> Child {
        let child = Command::new("setsid")
            .args(["sh", "-c", "trap '' TERM; sleep 60 & wait"])
            .env(RUN_MARKER_ENV, marker)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while marked_processes(marker).len() < 2 && Instant::now() < deadline {
            sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(marked_processes(marker).len(), 2);
        child
    }

    #[tokio::test]
    async fn sweep_kills_marked_processes_that_left_the_group_and_ignore_term() {
        let marker = format!("unit-{}-full", std::process::id());
        let mut child = escaping_tree(&marker).await;
        let run = RunProcesses::new(None, &marker);
        run.signal(Signal::SIGTERM).await;
        assert!(
            !run.wait_until_gone(Instant::now() + Duration::from_millis(300))
                .await
        );
        run.kill_all().await;
        let _ = child.wait();
        assert!(marked_processes(&marker).is_empty());
    }

    #[tokio::test]
    async fn a_pid_window_scan_reads_only_pids_since_the_leader() {
        let marker = format!("unit-{}-window", std::process::id());
        let mut child = escaping_tree(&marker).await;
        let leader = child.id() as i32;
        let since_leader = PidWindow { first: leader };
        assert_eq!(marked_in(&marker, Some(since_leader)).len(), 2);
        // A window too long to probe pid by pid: /proc is listed instead.
        let long = PidWindow {
            first: (leader - PROBED_PIDS).max(1),
        };
        assert_eq!(marked_in(&marker, Some(long)).len(), 2);
        let mut later = Command::new("true").spawn().unwrap();
        let after_them = PidWindow {
            first: later.id() as i32,
        };
        let _ = later.wait();
        assert!(marked_in(&marker, Some(after_them)).is_empty());
        RunProcesses::new(Some(Pid::from_raw(leader)), &marker)
            .kill_all()
            .await;
        let _ = child.wait();
        assert!(marked_processes(&marker).is_empty());
    }

    #[tokio::test]
    async fn a_scan_skips_the_main_processes_of_other_runs() {
        let marker = format!("unit-{}-others", std::process::id());
        let mut own = Command::new("true").spawn().unwrap();
        let own_leader = Pid::from_raw(own.id() as i32);
        let _ = own.wait();
        // Started after this run's leader, in its window, and carrying its
        // marker, so that only being counted as another run's leader hides it.
        let mut other = Command::new("sleep")
            .arg("60")
            .env(RUN_MARKER_ENV, &marker)
            .spawn()
            .unwrap();
        let other_pid = Pid::from_raw(other.id() as i32);
        let run = RunProcesses::new(Some(own_leader), &marker);
        // Its environment can be read once its exec is through.
        let deadline = Instant::now() + Duration::from_secs(5);
        while run.marked().await.is_empty() && Instant::now() < deadline {
            sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(run.marked().await, vec![other_pid]);
        let leaders = Arc::new(Leaders::default());
        let counted = leaders.enter(other_pid);
        assert!(
            run.clone()
                .besides(leaders.clone())
                .marked()
                .await
                .is_empty()
        );
        drop(counted);
        assert_eq!(run.besides(leaders).marked().await, vec![other_pid]);
        let _ = other.kill();
        let _ = other.wait();
    }

    #[test]
    fn a_short_window_probes_neither_a_reaped_main_process_nor_other_runs_ones() {
        let leaders = Arc::new(Leaders::default());
        let run = RunProcesses::new(Some(Pid::from_raw(1000)), "m").besides(leaders.clone());
        let window = || (1000..=1003).collect::<Vec<_>>();
        let own = leaders.enter(Pid::from_raw(1000));
        let other = leaders.enter(Pid::from_raw(1002));
        // Under way, this run's main process is read; another's is not.
        assert_eq!(run.worth_probing(window()), [1000, 1001, 1003]);
        drop(own);
        // Reaped, its pid is free: nothing there to read.
        assert_eq!(run.worth_probing(window()), [1001, 1003]);
        drop(other);
        assert_eq!(run.worth_probing(window()), [1001, 1002, 1003]);
        // Without the count of main processes, every pid is read.
        let uncounted = RunProcesses::new(Some(Pid::from_raw(1000)), "m");
        assert_eq!(uncounted.worth_probing(window()), window());
    }

    #[test]
    fn a_pid_window_holds_the_pids_allocated_since_its_first() {
        let window = PidWindow { first: 1000 };
        assert!(window.holds(1000, 1200));
        assert!(window.holds(1200, 1200));
        assert!(!window.holds(999, 1200));
        assert!(!window.holds(1201, 1200));
        // The counter wrapped after 1000: pids from 1000 up and from the
        // bottom up to the newest are inside.
        assert!(window.holds(4_000_000, 400));
        assert!(window.holds(300, 400));
        assert!(!window.holds(401, 400));
        assert!(!window.holds(999, 400));
    }
}
