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
//! to its default action. The signals the worker did not ignore when the
//! launcher was made are named to `posix_spawn` as the ones to reset: glibc
//! then sets each once, where it would otherwise ask for the disposition of
//! every signal and set most of them anyway, two system calls each (half of
//! the system calls a task cost the worker and its children before exec,
//! docs/BENCHMARKS.md). Its exit is watched through a pidfd (Linux 5.3+),
//! which wakes the runtime once, with no signal handler involved; where
//! there are no pidfds, every SIGCHLD wakes it to look. Dropped before its
//! exit was seen, the child is killed and reaped in the background, like
//! tokio's `kill_on_drop`.

// posix_spawn has no safe wrapper in the crates we use.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::libc;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{Pid, pipe2};
use tokio::net::unix::pipe;

use super::kill::{LeaderGuard, Leaders};
use exit::{ExitWatch, reap};

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
    /// The signals the child sets back to their default action before it
    /// execs: SIGPIPE, and every one the worker did not ignore when the
    /// launcher was made. One ignored then stays ignored in the child.
    signal_defaults: Vec<libc::c_int>,
    /// The main processes started and not reaped yet.
    leaders: Arc<Leaders>,
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
            signal_defaults: signals_to_default(),
            leaders: Arc::default(),
        })
    }

    /// The main processes this launcher started that are not reaped yet.
    pub(super) fn leaders(&self) -> Arc<Leaders> {
        self.leaders.clone()
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
        // Made before the pipes are registered: if that fails, its drop
        // kills and reaps the process.
        let mut child = RunChild {
            pid,
            exit: Some(exit),
            status: None,
            stdout: None,
            stderr: None,
            counted: Some(self.leaders.enter(pid)),
        };
        child.stdout = Some(receiver(stdout_read)?);
        child.stderr = Some(receiver(stderr_read)?);
        Ok(child)
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
            let mut defaults: libc::sigset_t = std::mem::zeroed();
            check(libc::sigemptyset(&mut defaults))?;
            for signal in &self.signal_defaults {
                check(libc::sigaddset(&mut defaults, *signal))?;
            }
            check(libc::posix_spawnattr_setsigdefault(
                &mut setup.attributes,
                &defaults,
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
    /// Its place in the launcher's [`Leaders`], given up as it is reaped.
    counted: Option<LeaderGuard>,
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
                self.counted = None;
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
        let (pid, exit, counted) = (self.pid, self.exit.take(), self.counted.take());
        match (tokio::runtime::Handle::try_current(), exit) {
            (Ok(runtime), Some(mut exit)) => {
                runtime.spawn(async move {
                    while matches!(reap(pid), Ok(None)) && exit.changed().await.is_ok() {}
                    drop(counted);
                });
            }
            // Killed: it is gone in a moment.
            _ => {
                let _ = waitpid(pid, None);
            }
        }
    }
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

/// The read end `fd` of one of a child's output pipes, registered with the
/// runtime. Made non-blocking here, with the one flag it needs: tokio's
/// checked constructor would first ask what the descriptor is and which
/// flags it has (two system calls a pipe).
fn receiver(fd: OwnedFd) -> io::Result<pipe::Receiver> {
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    pipe::Receiver::from_owned_fd_unchecked(fd)
}

/// SIGPIPE, which the Rust runtime ignores, and every signal this process
/// does not ignore now and that a signal set can hold (not SIGKILL and
/// SIGSTOP, which cannot be changed, nor the C library's own).
fn signals_to_default() -> Vec<libc::c_int> {
    (1..=libc::SIGRTMAX())
        .filter(|&signal| signal != libc::SIGKILL && signal != libc::SIGSTOP)
        .filter(|&signal| signal == libc::SIGPIPE || !ignored(signal))
        .filter(|&signal| {
            // SAFETY: `set` is a plain C struct that sigemptyset fills in.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set) == 0 && libc::sigaddset(&mut set, signal) == 0
            }
        })
        .collect()
}

/// Whether this process ignores `signal` (false if it cannot be asked).
fn ignored(signal: libc::c_int) -> bool {
    // SAFETY: with a null new action, sigaction only writes the current
    // one into `current`, a plain C struct.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    }
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

mod exit;
#[cfg(test)]
mod tests;
