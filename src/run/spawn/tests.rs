//! The launcher against real processes: `sh`, `env` and `grep`.

use super::*;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use tokio::io::AsyncReadExt;

fn shell(dir: &Path, common: &[(&str, OsString)]) -> Launcher {
    Launcher::new(Path::new("sh"), dir, common, &["RUN_ONLY"]).unwrap()
}

/// A shell launcher whose children's exits are watched by pidfd, or by
/// SIGCHLD (the fallback) when `pidfds` is false.
fn shell_watching(dir: &Path, pidfds: bool) -> Launcher {
    Launcher {
        pidfds,
        ..shell(dir, &[])
    }
}

/// Runs the launcher's program with `args` and `variables` to its end; its
/// exit status and standard output.
async fn output_of(
    launcher: &Launcher,
    args: &[&str],
    variables: &[(&str, &OsStr)],
) -> (ExitStatus, String) {
    let args = args.iter().map(OsString::from).collect();
    let mut child = launcher.spawn(args, variables).unwrap();
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    stdout.read_to_string(&mut out).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the child exits")
        .unwrap();
    (status, out)
}

/// Runs the shell `script` to its end, with the run variable set.
async fn run(launcher: &Launcher, script: &str) -> (ExitStatus, String) {
    output_of(launcher, &["-c", script], &[("RUN_ONLY", OsStr::new("r1"))]).await
}

#[tokio::test]
async fn a_run_inherits_the_environment_with_the_common_and_its_own_variables_once() {
    let dir = tempfile::TempDir::new().unwrap();
    let common = [
        ("COMMON_ONE", OsString::from("1")),
        ("PATH", OsString::from("/usr/bin:/bin")),
    ];
    // `env` itself, not a shell, which would hide a doubled variable.
    let env = Launcher::new(Path::new("env"), dir.path(), &common, &["RUN_ONLY"]).unwrap();
    let (status, out) = output_of(&env, &[], &[("RUN_ONLY", OsStr::new("r1"))]).await;
    assert!(status.success());
    let lines: Vec<&str> = out.lines().collect();
    let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("COMMON_ONE="), 1);
    assert!(lines.contains(&"COMMON_ONE=1"));
    assert_eq!(
        count("PATH="),
        1,
        "a common variable replaces the inherited one"
    );
    assert!(lines.contains(&"PATH=/usr/bin:/bin"));
    assert_eq!(count("RUN_ONLY="), 1);
    assert!(lines.contains(&"RUN_ONLY=r1"));
    let home = std::env::var("HOME").unwrap();
    assert!(
        lines.contains(&format!("HOME={home}").as_str()),
        "inherited"
    );
}

#[tokio::test]
async fn a_run_starts_in_its_directory_as_a_group_leader_with_no_input() {
    let dir = tempfile::TempDir::new().unwrap();
    let script = "pwd; cat; echo pgid=$(cut -d' ' -f5 /proc/$$/stat) pid=$$";
    let (status, out) = run(&shell(dir.path(), &[]), script).await;
    assert!(status.success());
    let mut lines = out.lines();
    let pwd = lines.next().unwrap();
    assert_eq!(Path::new(pwd), dir.path().canonicalize().unwrap());
    let ids = lines.next().unwrap();
    let (pgid, pid) = ids.split_once(' ').unwrap();
    assert_eq!(
        pgid.trim_start_matches("pgid="),
        pid.trim_start_matches("pid=")
    );
}

#[tokio::test]
async fn signals_are_unblocked_and_sigpipe_is_back_to_its_default() {
    // The test harness, like the worker, ignores SIGPIPE itself. `grep`
    // reads its own masks (a shell's change while it waits for a child).
    // SIGUSR2, ignored here as `nohup` ignores SIGHUP, stays ignored.
    // SAFETY: nothing in this test binary sends or handles SIGUSR2.
    unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
    let dir = tempfile::TempDir::new().unwrap();
    let grep = Launcher::new(Path::new("grep"), dir.path(), &[], &[]).unwrap();
    assert!(grep.signal_defaults.contains(&libc::SIGPIPE));
    assert!(grep.signal_defaults.contains(&libc::SIGTERM));
    assert!(!grep.signal_defaults.contains(&libc::SIGUSR2));
    let args = ["-E", "^Sig(Blk|Ign)", "/proc/self/status"];
    let (status, out) = output_of(&grep, &args, &[]).await;
    assert!(status.success());
    let mask = |name: &str| {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0);
    let sigpipe = 1 << (libc::SIGPIPE - 1);
    assert_eq!(mask("SigIgn:") & sigpipe, 0, "{out}");
    let sigusr2 = 1 << (libc::SIGUSR2 - 1);
    assert_eq!(mask("SigIgn:") & sigusr2, sigusr2, "{out}");
}

#[tokio::test]
async fn the_output_pipes_are_read_without_blocking() {
    // tokio reads a pipe until it would block: a blocking descriptor would
    // hold a runtime thread whenever a read happens to fill its buffer.
    let dir = tempfile::TempDir::new().unwrap();
    let child = shell(dir.path(), &[])
        .spawn(vec!["-c".into(), "exit 0".into()], &[])
        .unwrap();
    for pipe in [child.stdout.as_ref(), child.stderr.as_ref()] {
        let fd = pipe.unwrap().as_raw_fd();
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap());
        assert!(flags.contains(OFlag::O_NONBLOCK), "{flags:?}");
    }
}

#[tokio::test]
async fn a_started_process_counts_as_a_leader_until_it_is_reaped() {
    let dir = tempfile::TempDir::new().unwrap();
    let launcher = shell(dir.path(), &[]);
    let counted = |pid: Pid| launcher.leaders().lock().contains(&pid.as_raw());
    let mut child = launcher
        .spawn(vec!["-c".into(), "exit 0".into()], &[])
        .unwrap();
    assert!(counted(child.pid()));
    child.wait().await.unwrap();
    assert!(!counted(child.pid()));
    // Dropped while it runs: counted until the background reaper is done.
    let running = launcher
        .spawn(vec!["-c".into(), "sleep 60".into()], &[])
        .unwrap();
    let pid = running.pid();
    drop(running);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counted(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!counted(pid));
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported_by_either_watch() {
    let dir = tempfile::TempDir::new().unwrap();
    for pidfds in [true, false] {
        let launcher = shell_watching(dir.path(), pidfds);
        let (status, _) = run(&launcher, "sleep 0.05; exit 3").await;
        assert_eq!(status.code(), Some(3), "pidfds: {pidfds}");
        let (status, _) = run(&launcher, "kill -TERM $$").await;
        assert_eq!(status.signal(), Some(libc::SIGTERM), "pidfds: {pidfds}");
    }
}

#[tokio::test]
async fn a_dropped_child_is_killed_and_reaped() {
    let dir = tempfile::TempDir::new().unwrap();
    for pidfds in [true, false] {
        let launcher = shell_watching(dir.path(), pidfds);
        let child = launcher
            .spawn(vec!["-c".into(), "sleep 60".into()], &[])
            .unwrap();
        let proc_dir = format!("/proc/{}", child.pid());
        assert!(Path::new(&proc_dir).exists());
        drop(child);
        // Gone entirely, not a zombie: reaped.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Path::new(&proc_dir).exists() {
            assert!(tokio::time::Instant::now() < deadline, "{proc_dir} remains");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn a_missing_program_or_a_nul_byte_is_an_error() {
    let dir = tempfile::TempDir::new().unwrap();
    let missing = Launcher::new(Path::new("/no/such/program"), dir.path(), &[], &[]).unwrap();
    let e = missing.spawn(Vec::new(), &[]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    let e = shell(dir.path(), &[])
        .spawn(vec!["a\0b".into()], &[])
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn a_relative_program_path_is_taken_from_the_worker_s_directory() {
    let dir = tempfile::TempDir::new().unwrap();
    let launcher = Launcher::new(Path::new("bin/x"), dir.path(), &[], &[]).unwrap();
    let expected = std::env::current_dir().unwrap().join("bin/x");
    assert_eq!(launcher.program.as_bytes(), expected.as_os_str().as_bytes());
    assert!(!launcher.search_path);
    let bare = Launcher::new(Path::new("sh"), dir.path(), &[], &[]).unwrap();
    assert!(bare.search_path);
}
