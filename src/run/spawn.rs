//! Starting `ansible-playbook`: `posix_spawn` with an environment built once.
//!
//! std's `Command` copies the worker's whole environment into a sorted map,
//! and from it into new C strings, on every spawn once any variable is set:
//! with a few dozen variables that was a fifth of the worker's own
//! instructions per task (docs/BENCHMARKS.md). Here the inherited part,
//! with the variables every run sets, is built once when the runner starts;
//! a spawn adds only the run's own variables.
//!
//! The child starts as std would start it for [`super::PlaybookRunner`]:
//! a process-group leader, in the playbook directory, stdin from
//! `/dev/null`, stdout and stderr piped, no signal blocked and SIGPIPE back
//! to its default action. Its exit is watched through a pidfd (Linux 5.3+),
//! which wakes the runtime once, with no signal handler involved. Dropped
//! before its exit was seen, the child is killed and reaped in the
//! background, like tokio's `kill_on_drop`.

// posix_spawn and pidfd_open have no safe wrapper in the crates we use.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// What every run of one runner starts with: the program, its working
/// directory and the environment it inherits, as C strings.
#[derive(Debug)]
pub(super) struct Launcher {
    program: CString,
    /// Searched on `PATH` (a bare name) rather than taken as a path.
    search_path: bool,
    working_dir: CString,
    /// `NAME=value`, the worker's own environment with the runs' common
    /// variables applied.
    environment: Vec<CString>,
    /// Whether exits are watched through pidfds where the system has them
    /// (always, but in the tests of the fallback).
    pidfds: bool,
}

impl Launcher {
    /// A launcher of `program` in `working_dir`, with the worker's
    /// environment as it is now, `common` set in it, and none of
    /// `per_run` (each spawn sets those).
    pub(super) fn new(
        program: &Path,
        working_dir: &Path,
        common: &[(&str, OsString)],
        per_run: &[&str],
    ) -> io::Result<Self> {
        let search_path = !program.as_os_str().as_bytes().contains(&b'/');
        // The child changes directory before it execs: a relative path
        // must not be taken from the playbook directory.
        let program = if search_path || program.is_absolute() {
            program.to_path_buf()
        } else {
            std::env::current_dir()?.join(program)
        };
        let set_here = |name: &OsStr| {
            common.iter().any(|(common, _)| OsStr::new(common) == name)
                || per_run.iter().any(|run| OsStr::new(run) == name)
        };
        let mut environment: Vec<CString> = std::env::vars_os()
            .filter(|(name, _)| !set_here(name))
            .filter_map(|(name, value)| variable(&name, &value).ok())
            .collect();
        for (name, value) in common {
            environment.push(variable(OsStr::new(name), value)?);
        }
        Ok(Launcher {
            program: c_string(program.into_os_string())?,
            search_path,
            working_dir: c_string(working_dir.as_os_str().to_owned())?,
            environment,
            pidfds: true,
        })
    }

    /// Starts the program with `args` (after the program name) and the
    /// run's own `variables`.
    pub(super) fn spawn(
        &self,
        args: Vec<OsString>,
        variables: &[(&str, &OsStr)],
    ) -> io::Result<RunChild> {
        let args = std::iter::once(Ok(self.program.clone()))
            .chain(args.into_iter().map(c_string))
            .collect::<io::Result<Vec<CString>>>()?;
        let run_variables = variables
            .iter()
            .map(|(name, value)| variable(OsStr::new(name), value))
            .collect::<io::Result<Vec<CString>>>()?;
        let (stdout_read, stdout_write) = pipe2(OFlag::O_CLOEXEC)?;
        let (stderr_read, stderr_write) = pipe2(OFlag::O_CLOEXEC)?;
        let argv = pointers(&args);
        let envp = pointers(self.environment.iter().chain(&run_variables));
        let pid = self.posix_spawn(
            &argv,
            &envp,
            stdout_write.as_raw_fd(),
            stderr_write.as_raw_fd(),
        )?;
        // Only the child writes to the pipes now.
        drop((stdout_write, stderr_write));
        let exit = match ExitWatch::new(pid, self.pidfds) {
            Ok(exit) => exit,
            Err(e) => {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot watch the started process: {e}"),
                ));
            }
        };
        Ok(RunChild {
            pid,
            exit: Some(exit),
            status: None,
            stdout: Some(pipe::Receiver::from_owned_fd(stdout_read)?),
            stderr: Some(pipe::Receiver::from_owned_fd(stderr_read)?),
        })
    }

    fn posix_spawn(
        &self,
        argv: &[*mut libc::c_char],
        envp: &[*mut libc::c_char],
        stdout: libc::c_int,
        stderr: libc::c_int,
    ) -> io::Result<Pid> {
        let devnull = c"/dev/null";
        // SAFETY: the attribute and action objects are initialised before
        // use and destroyed once, on every path (`SpawnSetup`'s drop); every
        // pointer handed over points into C strings (`self`, `argv` and
        // `envp`, which are null-terminated arrays of them) that outlive the
        // call; `posix_spawn` copies what it needs before it returns.
        unsafe {
            let mut setup = SpawnSetup::new()?;
            check(libc::posix_spawn_file_actions_addopen(
                &mut setup.actions,
                0,
                devnull.as_ptr(),
                libc::O_RDONLY,
                0,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(
                &mut setup.actions,
                stdout,
                1,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(
                &mut setup.actions,
                stderr,
                2,
            ))?;
            check(libc::posix_spawn_file_actions_addchdir_np(
                &mut setup.actions,
                self.working_dir.as_ptr(),
            ))?;
            let mut no_signals: libc::sigset_t = std::mem::zeroed();
            check(libc::sigemptyset(&mut no_signals))?;
            check(libc::posix_spawnattr_setsigmask(
                &mut setup.attributes,
                &no_signals,
            ))?;
            let mut pipe_default: libc::sigset_t = std::mem::zeroed();
            check(libc::sigemptyset(&mut pipe_default))?;
            check(libc::sigaddset(&mut pipe_default, libc::SIGPIPE))?;
            check(libc::posix_spawnattr_setsigdefault(
                &mut setup.attributes,
                &pipe_default,
            ))?;
            check(libc::posix_spawnattr_setpgroup(&mut setup.attributes, 0))?;
            let flags = libc::POSIX_SPAWN_SETPGROUP
                | libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(
                &mut setup.attributes,
                flags as libc::c_short,
            ))?;
            let mut pid: libc::pid_t = 0;
            let spawn = if self.search_path {
                libc::posix_spawnp
            } else {
                libc::posix_spawn
            };
            check(spawn(
                &mut pid,
                self.program.as_ptr(),
                &setup.actions,
                &setup.attributes,
                argv.as_ptr(),
                envp.as_ptr(),
            ))?;
            Ok(Pid::from_raw(pid))
        }
    }
}

/// A started run's main process.
#[derive(Debug)]
pub(super) struct RunChild {
    pid: Pid,
    /// Tells when the process may have exited; `None` once handed to a
    /// reaper.
    exit: Option<ExitWatch>,
    status: Option<ExitStatus>,
    /// Its standard output, until taken.
    pub(super) stdout: Option<pipe::Receiver>,
    /// Its standard error, until taken.
    pub(super) stderr: Option<pipe::Receiver>,
}

impl RunChild {
    /// The process id (also its process group's).
    pub(super) fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits for the process to exit and reaps it. Cancel safe; once it
    /// returned a status, it returns that again.
    pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            if let Some(status) = reap(self.pid)? {
                self.status = Some(status);
                continue;
            }
            let exit = self.exit.as_mut().expect("watched until reaped");
            exit.changed().await?;
        }
    }
}

impl Drop for RunChild {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        if matches!(reap(self.pid), Ok(Some(_)) | Err(_)) {
            return;
        }
        let (pid, exit) = (self.pid, self.exit.take());
        match (tokio::runtime::Handle::try_current(), exit) {
            (Ok(runtime), Some(mut exit)) => {
                runtime.spawn(async move {
                    while matches!(reap(pid), Ok(None)) && exit.changed().await.is_ok() {}
                });
            }
            // Killed: it is gone in a moment.
            _ => {
                let _ = waitpid(pid, None);
            }
        }
    }
}

/// How a child's exit is noticed: its pidfd turning readable, or, where
/// there are no pidfds (kernels before 5.3, some sandboxes, valgrind), any
/// SIGCHLD.
#[derive(Debug)]
enum ExitWatch {
    Pidfd(AsyncFd<OwnedFd>),
    Signals(tokio::signal::unix::Signal),
}

impl ExitWatch {
    /// A watch on the child `pid` (by pidfd if `pidfd`), made before its
    /// exit status is first asked for (so a SIGCHLD that comes later is not
    /// missed).
    fn new(pid: Pid, pidfd: bool) -> io::Result<Self> {
        if !pidfd {
            return Self::signals();
        }
        match pidfd_open(pid) {
            Ok(pidfd) => watch_exit(pidfd).map(ExitWatch::Pidfd),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EPERM | libc::EACCES)
                ) =>
            {
                Self::signals()
            }
            Err(e) => Err(e),
        }
    }

    /// A watch on every SIGCHLD from now on.
    fn signals() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::child()).map(ExitWatch::Signals)
    }

    /// Waits until the process may have exited since the last call.
    async fn changed(&mut self) -> io::Result<()> {
        match self {
            ExitWatch::Pidfd(pidfd) => pidfd.readable().await?.clear_ready(),
            ExitWatch::Signals(signals) => {
                signals.recv().await;
            }
        }
        Ok(())
    }
}

/// The status of `pid` if it exited (and is reaped now), `None` while it
/// runs.
fn reap(pid: Pid) -> io::Result<Option<ExitStatus>> {
    Ok(match waitpid(pid, Some(WaitPidFlag::WNOHANG))? {
        WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
        WaitStatus::Signaled(_, signal, core) => Some(ExitStatus::from_raw(
            signal as i32 | if core { 0x80 } else { 0 },
        )),
        _ => None,
    })
}

/// The `posix_spawn` attribute and file-action objects, destroyed on drop
/// (neither points into itself: glibc and musl keep their parts on the heap).
struct SpawnSetup {
    attributes: libc::posix_spawnattr_t,
    actions: libc::posix_spawn_file_actions_t,
}

impl SpawnSetup {
    fn new() -> io::Result<Self> {
        // SAFETY: both objects are plain C structs that their init
        // functions fill in before any other use; `Drop` destroys them.
        unsafe {
            let mut attributes = std::mem::zeroed();
            check(libc::posix_spawnattr_init(&mut attributes))?;
            let mut actions = std::mem::zeroed();
            if let Err(e) = check(libc::posix_spawn_file_actions_init(&mut actions)) {
                libc::posix_spawnattr_destroy(&mut attributes);
                return Err(e);
            }
            Ok(SpawnSetup {
                attributes,
                actions,
            })
        }
    }
}

impl Drop for SpawnSetup {
    fn drop(&mut self) {
        // SAFETY: both were initialised by `SpawnSetup::new`.
        unsafe {
            libc::posix_spawn_file_actions_destroy(&mut self.actions);
            libc::posix_spawnattr_destroy(&mut self.attributes);
        }
    }
}

/// A pidfd of the child `pid`, non-blocking and closed on exec.
fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: a plain system call with integer arguments; a non-negative
    // result is a new file descriptor nothing else owns.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), libc::PIDFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd as libc::c_int))
    }
}

/// Registers `pidfd` with the runtime, to learn when its process exits.
fn watch_exit(pidfd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` stays open, with the same descriptor, for as
    // long as the `AsyncFd` owns it.
    unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.map_err(Into::into)
}

/// A libc return code (0 or an error number) as a result.
fn check(code: libc::c_int) -> io::Result<()> {
    match code {
        0 => Ok(()),
        -1 => Err(io::Error::last_os_error()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// The null-terminated array of pointers to `strings`.
fn pointers<'a>(strings: impl IntoIterator<Item = &'a CString>) -> Vec<*mut libc::c_char> {
    strings
        .into_iter()
        .map(|string| string.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

/// `NAME=value` as a C string.
fn variable(name: &OsStr, value: &OsStr) -> io::Result<CString> {
    let mut pair = Vec::with_capacity(name.len() + value.len() + 2);
    pair.extend_from_slice(name.as_bytes());
    pair.push(b'=');
    pair.extend_from_slice(value.as_bytes());
    c_string(OsString::from_vec(pair))
}

/// `string` as a C string; an error if it holds a NUL byte.
fn c_string(string: OsString) -> io::Result<CString> {
    CString::new(string.into_vec()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument or variable holds a NUL byte",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    fn shell(dir: &Path, common: &[(&str, OsString)]) -> Launcher {
        Launcher::new(Path::new("sh"), dir, common, &["RUN_ONLY"]).unwrap()
    }

    /// Runs `script` to its end; its exit status and standard output.
    async fn run(launcher: &Launcher, script: &str) -> (ExitStatus, String) {
        let mut child = launcher
            .spawn(
                vec!["-c".into(), script.into()],
                &[("RUN_ONLY", OsStr::new("r1"))],
            )
            .unwrap();
        let mut out = String::new();
        let mut stdout = child.stdout.take().unwrap();
        stdout.read_to_string(&mut out).await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("the child exits")
            .unwrap();
        (status, out)
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
        let mut child = env
            .spawn(Vec::new(), &[("RUN_ONLY", OsStr::new("r1"))])
            .unwrap();
        let mut out = String::new();
        let mut stdout = child.stdout.take().unwrap();
        stdout.read_to_string(&mut out).await.unwrap();
        assert!(child.wait().await.unwrap().success());
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
        let dir = tempfile::TempDir::new().unwrap();
        let grep = Launcher::new(Path::new("grep"), dir.path(), &[], &[]).unwrap();
        let args = ["-E", "^Sig(Blk|Ign)", "/proc/self/status"];
        let mut child = grep.spawn(args.map(OsString::from).to_vec(), &[]).unwrap();
        let mut out = String::new();
        let mut stdout = child.stdout.take().unwrap();
        stdout.read_to_string(&mut out).await.unwrap();
        assert!(child.wait().await.unwrap().success());
        let mask = |name: &str| {
            let line = out.lines().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        assert_eq!(mask("SigBlk:"), 0);
        let sigpipe = 1 << (libc::SIGPIPE - 1);
        assert_eq!(mask("SigIgn:") & sigpipe, 0, "{out}");
    }

    #[tokio::test]
    async fn exit_codes_and_signals_are_reported_by_either_watch() {
        let dir = tempfile::TempDir::new().unwrap();
        for pidfds in [true, false] {
            let mut launcher = shell(dir.path(), &[]);
            launcher.pidfds = pidfds;
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
            let mut launcher = shell(dir.path(), &[]);
            launcher.pidfds = pidfds;
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
}
